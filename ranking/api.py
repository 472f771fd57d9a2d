"""The ``/rank`` wire schema: one request, one slate, as JSON.

Serving validates requests with :class:`RankRequest` and answers with :class:`RankResponse`;
clients (:class:`simulation.remote.HttpPolicy`) build requests and validate answers with the
same two models, so the two sides cannot drift apart::

    {"context": {"user_id": "u7", "query": "navy coat"}, "candidates": ["i3", "i9", "i4"], "k": 2}
    {"items": ["i9", "i3"], "propensities": [1.0, 1.0], "scores": [2.0, 1.0], "policy": "oracle"}

A request names the context (``user_id`` and the request's scalar values), the distinct
candidate item ids and the number of slots ``k``; the answer is a
:class:`ranking.slate.Slate` plus the name of the policy that made it.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, field_validator

from ingest.events import MAX_ID_CHARS, MAX_SLOTS

ItemId = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
#: Candidates one request may carry; retrieval hands the policy a few hundred at most.
MAX_CANDIDATES = 10_000


class RankRequest(BaseModel):
    context: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    candidates: Annotated[list[ItemId], Field(min_length=1, max_length=MAX_CANDIDATES)]
    k: Annotated[int, Field(ge=1, le=MAX_SLOTS)]

    @field_validator("candidates")
    @classmethod
    def _distinct(cls, candidates: list[str]) -> list[str]:
        # A repeated candidate would let a correct policy show one item twice.
        first: dict[str, int] = {}
        for position, item in enumerate(candidates):
            earlier = first.setdefault(item, position)
            if earlier != position:
                raise ValueError(f"candidates[{position}]={item!r} repeats "
                                 f"candidates[{earlier}]")
        return candidates


class RankResponse(BaseModel):
    items: list[str]
    propensities: list[float]
    #: None where the policy does not score (a random order, say).
    scores: list[float] | None = None
    policy: str

"""What the retrieve-score-rerank pipeline exchanges with the parts plugged into it.

``ranking`` owns these contracts and imports no model: encoders, scorers and rerankers are
passed in (DESIGN.md, the layout). A text encoder from ``models.embeddings``, a user tower of a
two-tower retriever, a ranker artifact, a bandit policy: each fits one small Protocol here.

- :class:`Encoder`: keys (query texts, or user ids) to vectors in the index's space;
- :class:`CandidateScorer`: a score for every retrieved candidate of every request, NaN where
  it cannot score one (an item it never saw), so the pipeline keeps that item in retrieval
  order rather than dropping it;
- :class:`Reranker`: the last step, which picks the ``k`` shown and reports the propensity of
  each at its position (1 for a deterministic order; the bandit layer's exploration reports
  the real probability: DESIGN.md, Policies).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

#: The step of the pipeline that decided where an item stands.
Stage = Literal["retrieve", "score", "rerank"]


class PipelineInputError(ValueError):
    """A bad request or a part that breaks its contract; the message names the field."""


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Request:
    """One request: a ``query`` (search), a ``user_id`` (recommendation), or both (the query
    retrieves; the user is context for the scorer and the reranker). ``exclude`` holds items
    this request must not get back (seen or blocked)."""

    user_id: str | None = None
    query: str | None = None
    exclude: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        for name in ("user_id", "query"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise PipelineInputError(f"{name}={_show(value)} must be a non-empty string "
                                         "or None")
        if self.user_id is None and self.query is None:
            raise PipelineInputError("user_id=None and query=None: a request needs a query, "
                                     "a user_id, or both")
        if isinstance(self.exclude, (str, bytes)):
            raise PipelineInputError(f"exclude={_show(self.exclude)} must be a collection of "
                                     "item ids, not one string")
        object.__setattr__(self, "exclude", frozenset(self.exclude))


@dataclass(frozen=True)
class Candidates:
    """The retrieved candidates of a batch of requests, padded to one width ``N``.

    ``item_ids`` (B, N) holds item id strings, ``None`` on padding; ``mask`` (B, N) is True
    on real candidates; ``retrieval_scores`` (B, N) is the index's inner product, NaN on
    padding. Row ``b`` belongs to ``requests[b]``; within a row, retrieval order.
    """

    requests: Sequence[Request]
    item_ids: np.ndarray
    mask: np.ndarray
    retrieval_scores: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape  # type: ignore[return-value]


@dataclass(frozen=True)
class RankedItem:
    """One shown item: ``score`` is the score of the stage that placed it (the scorer's, or
    the retrieval similarity when nothing else scored it), ``retrieval_score`` the index's,
    ``propensity`` the probability the reranker put it at this position."""

    item_id: str
    position: int
    score: float
    stage: Stage
    retrieval_score: float
    propensity: float


class Encoder(Protocol):
    """Keys to vectors of the index's dimension. ``name`` must equal the index's ``model``
    for query encoders, so a query is never searched in another model's space. An unknown
    key (a user the tower never saw) is a ``KeyError`` naming it."""

    name: str
    dim: int

    def encode(self, keys: Sequence[str]) -> np.ndarray: ...


class CandidateScorer(Protocol):
    """Scores (B, N) for ``candidates`` (higher ranks first), NaN where it has none."""

    name: str

    def score(self, candidates: Candidates) -> np.ndarray: ...


class Reranker(Protocol):
    """The ``k`` shown: positions into each row of ``candidates`` (B, k), -1 where a row has
    fewer than ``k``, and the propensity of each shown item at its slot (B, k), NaN on
    padding. ``scores`` are the scorer's (NaN: unscored), or the retrieval scores when the
    pipeline has no scorer."""

    name: str

    def rerank(self, candidates: Candidates, scores: np.ndarray, k: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]: ...

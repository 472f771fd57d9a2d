"""The HTTP face of a ranking policy: ``POST /rank`` and ``GET /health``.

Routes validate and delegate; the policy (any :class:`ranking.slate.RankingPolicy`) does the
work. A request names the context, the candidates and ``k``::

    POST /rank {"context": {"user_id": "u7", "query": "navy coat"},
                "candidates": ["i3", "i9", "i4"], "k": 2}
    200 {"items": ["i9", "i3"], "propensities": [1.0, 1.0], "scores": [2.0, 1.0],
         "policy": "oracle"}

A malformed request gets 422 with FastAPI's JSON body, which names the field and the value
it got; a request the policy cannot answer (an unknown user id) gets 422 with ``detail``
saying why; a slate that breaks the contract (an item that was not a candidate, a
propensity outside (0, 1]) is never sent: the answer is 500 with ``detail`` naming it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ingest.events import MAX_ID_CHARS, MAX_SLOTS
from ranking.slate import RankingPolicy, SlateError

ItemId = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
#: Candidates one request may carry; retrieval hands the policy a few hundred at most.
MAX_CANDIDATES = 10_000


class RankRequest(BaseModel):
    context: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    candidates: Annotated[list[ItemId], Field(min_length=1, max_length=MAX_CANDIDATES)]
    k: Annotated[int, Field(ge=1, le=MAX_SLOTS)]


class RankResponse(BaseModel):
    items: list[str]
    propensities: list[float]
    scores: list[float] | None
    policy: str


class _BrokenSlate(Exception):
    """The policy answered with a slate that breaks the contract."""


def create_app(policy: RankingPolicy) -> FastAPI:
    app = FastAPI(title="clickloop", summary=f"ranking with policy {policy.name!r}")

    @app.exception_handler(SlateError)
    async def _unanswerable(request: Request, error: SlateError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(error)})

    @app.exception_handler(_BrokenSlate)
    async def _broken(request: Request, error: _BrokenSlate) -> JSONResponse:
        return JSONResponse(status_code=500, content={"detail": str(error)})

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "policy": policy.name}

    @app.post("/rank")
    def rank(request: RankRequest) -> RankResponse:
        slate = policy.rank(request.context, request.candidates, request.k)
        try:
            slate.check(request.candidates, request.k)
        except SlateError as error:
            raise _BrokenSlate(f"policy {policy.name!r} broke the slate contract: {error}") \
                from None
        return RankResponse(items=slate.items, propensities=slate.propensities,
                            scores=slate.scores, policy=policy.name)

    return app

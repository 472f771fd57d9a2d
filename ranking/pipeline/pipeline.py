"""Retrieve, score, rerank, top ``k``: one call for a whole batch of requests.

1. **Retrieve**: each request becomes a vector (its query through the query encoder, else its
   user through the user encoder), and the index returns its ``retrieve`` nearest items,
   skipping the request's exclusions.
2. **Score**: the scorer, when there is one, scores every candidate of every request at once
   (a ranker artifact, a recommender); without one, the retrieval similarity is the score.
3. **Rerank**: the last step picks the ``k`` shown and their propensities; by default the
   score order (:class:`~ranking.pipeline.rerankers.ScoreOrder`); the bandit layer plugs its
   exploring policy in here.

Each shown item reports its score and the stage that placed it: ``rerank`` where the reranker
moved it from the score order, ``score`` where the scorer's order put it there, ``retrieve``
where only the similarity did (no scorer, or one that could not score the item).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ranking.pipeline.contracts import (
    Candidates,
    CandidateScorer,
    Encoder,
    PipelineInputError,
    RankedItem,
    Request,
    Reranker,
    Stage,
)
from ranking.pipeline.rerankers import ScoreOrder, score_order


class SearchIndex(Protocol):
    """What the pipeline needs of :class:`ranking.index.VectorIndex`."""

    model: str

    @property
    def dim(self) -> int: ...

    def search(self, queries: np.ndarray, k: int, exclude: Sequence[frozenset[str]] | None
               ) -> tuple[list[list[str]], np.ndarray]: ...


class Pipeline:
    """See the module doc. ``retrieve``: candidates per request; ``seed``: the reranker's
    random stream (an exploring reranker draws from it)."""

    def __init__(self, index: SearchIndex, *, query_encoder: Encoder | None = None,
                 user_encoder: Encoder | None = None, scorer: CandidateScorer | None = None,
                 reranker: Reranker | None = None, retrieve: int = 100, seed: int = 0) -> None:
        if query_encoder is None and user_encoder is None:
            raise PipelineInputError("query_encoder=None and user_encoder=None: the pipeline "
                                     "needs at least one to turn a request into a vector")
        for name, encoder in (("query_encoder", query_encoder), ("user_encoder", user_encoder)):
            if encoder is not None and encoder.dim != index.dim:
                raise PipelineInputError(f"{name}.dim={encoder.dim} must equal the index's "
                                         f"dim={index.dim}")
        if query_encoder is not None and query_encoder.name != index.model:
            raise PipelineInputError(f"query_encoder.name={query_encoder.name!r} must equal "
                                     f"the index's model={index.model!r}: a query searched "
                                     "in another model's space finds nothing meaningful")
        if not isinstance(retrieve, int) or retrieve < 1:
            raise PipelineInputError(f"retrieve={retrieve!r} must be an integer >= 1")
        self.index = index
        self.query_encoder = query_encoder
        self.user_encoder = user_encoder
        self.scorer = scorer
        self.reranker = reranker if reranker is not None else ScoreOrder()
        self.retrieve = retrieve
        self.rng = np.random.default_rng(seed)

    # -- steps ---------------------------------------------------------------------------------
    def vectors(self, requests: Sequence[Request]) -> np.ndarray:
        """(B, dim) vectors: a request's query when it has one, else its user."""
        out = np.empty((len(requests), self.index.dim), dtype=np.float32)
        by_query = [b for b, r in enumerate(requests) if r.query is not None]
        by_user = [b for b, r in enumerate(requests) if r.query is None]
        for rows, encoder, field in ((by_query, self.query_encoder, "query"),
                                     (by_user, self.user_encoder, "user_id")):
            if not rows:
                continue
            if encoder is None:
                raise PipelineInputError(
                    f"requests[{rows[0]}].{field}={getattr(requests[rows[0]], field)!r}: this "
                    f"pipeline has no {'query' if field == 'query' else 'user'} encoder")
            keys = [getattr(requests[b], field) for b in rows]
            try:
                encoded = np.asarray(encoder.encode(keys), dtype=np.float32)
            except KeyError as exc:
                raise PipelineInputError(f"{field}={exc.args[0]!r} is unknown to the "
                                         f"{encoder.name} encoder") from None
            if encoded.shape != (len(rows), self.index.dim):
                raise PipelineInputError(f"{encoder.name}.encode gave shape {encoded.shape}; "
                                         f"expected {(len(rows), self.index.dim)}")
            out[rows] = encoded
        return out

    def candidates(self, requests: Sequence[Request]) -> Candidates:
        """Step 1: the ``retrieve`` nearest items of every request, padded to one width."""
        ids, scores = self.index.search(self.vectors(requests), self.retrieve,
                                        exclude=[r.exclude for r in requests])
        width = max((len(row) for row in ids), default=0)
        item_ids = np.full((len(requests), width), None, dtype=object)
        mask = np.zeros((len(requests), width), dtype=bool)
        for b, row in enumerate(ids):
            item_ids[b, : len(row)] = row
            mask[b, : len(row)] = True
        return Candidates(requests, item_ids, mask,
                          np.where(mask, scores[:, :width], np.nan).astype(np.float32))

    def scores(self, candidates: Candidates) -> np.ndarray | None:
        """Step 2: the scorer's (B, N) scores, NaN on padding; None without a scorer."""
        if self.scorer is None:
            return None
        scores = np.asarray(self.scorer.score(candidates), dtype=np.float64)
        if scores.shape != candidates.shape:
            raise PipelineInputError(f"scorer {self.scorer.name!r} gave shape {scores.shape}; "
                                     f"expected {candidates.shape}")
        if np.isinf(scores[candidates.mask]).any():
            raise PipelineInputError(f"scorer {self.scorer.name!r} gave an infinite score; "
                                     "use NaN for items it cannot score")
        return np.where(candidates.mask, scores, np.nan)

    # -- the whole path ------------------------------------------------------------------------
    def run(self, requests: Sequence[Request], k: int) -> list[list[RankedItem]]:
        """The top ``k`` of every request, each item with its score and stage."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.retrieve:
            raise PipelineInputError(f"k={k!r} must be an integer in [1, retrieve="
                                     f"{self.retrieve}]: the top k are chosen among the "
                                     "retrieved")
        for b, request in enumerate(requests):
            if not isinstance(request, Request):
                raise PipelineInputError(f"requests[{b}]={request!r:.60} must be a Request")
        if not requests:
            return []
        candidates = self.candidates(requests)
        scored = self.scores(candidates)
        scores = scored if scored is not None else candidates.retrieval_scores.astype(float)
        positions, propensity = self.reranker.rerank(candidates, scores, k, self.rng)
        positions, propensity = np.asarray(positions), np.asarray(propensity)
        if positions.shape != (len(requests), k) or propensity.shape != positions.shape:
            raise PipelineInputError(f"reranker {self.reranker.name!r} gave positions of shape "
                                     f"{positions.shape} and propensities of shape "
                                     f"{propensity.shape}; expected ({len(requests)}, {k})")
        self._check_reranked(positions, propensity, candidates.shape[1])
        rank_by_score = np.argsort(score_order(candidates, scores), axis=1)
        return [self._ranked(b, candidates, scored, positions[b], propensity[b],
                             rank_by_score[b]) for b in range(len(requests))]

    def _check_reranked(self, positions: np.ndarray, propensity: np.ndarray, width: int
                        ) -> None:
        """Positions are integers in [-1, width); a shown item's propensity is in (0, 1]:
        it is what gets logged with the impression, so a bad one must never pass."""
        name = self.reranker.name
        if positions.dtype.kind not in "iu":
            raise PipelineInputError(f"reranker {name!r} gave positions of dtype "
                                     f"{positions.dtype}; they must be integers")
        outside = (positions < -1) | (positions >= width)
        if outside.any():
            b, slot = np.argwhere(outside)[0]
            raise PipelineInputError(f"reranker {name!r} gave position {positions[b, slot]} "
                                     f"for request {b}, slot {slot}: it must be -1 or in "
                                     f"[0, {width})")
        shown = positions >= 0
        with np.errstate(invalid="ignore"):
            wrong = shown & ~((propensity > 0) & (propensity <= 1))
        if wrong.any():
            b, slot = np.argwhere(wrong)[0]
            value = float(propensity[b, slot])
            raise PipelineInputError(f"reranker {name!r} gave propensity {value!r} for request "
                                     f"{b}, slot {slot}: it must be in (0, 1]")

    def _ranked(self, b: int, candidates: Candidates, scored: np.ndarray | None,
                positions: np.ndarray, propensity: np.ndarray, rank_by_score: np.ndarray
                ) -> list[RankedItem]:
        out: list[RankedItem] = []
        seen: set[int] = set()
        for slot, position in enumerate(positions.tolist()):
            if position < 0:
                continue
            if not candidates.mask[b, position] or position in seen:
                raise PipelineInputError(f"reranker {self.reranker.name!r} chose position "
                                         f"{position} of request {b}: not a candidate, or "
                                         "chosen twice")
            seen.add(position)
            retrieval = float(candidates.retrieval_scores[b, position])
            has_score = scored is not None and not np.isnan(scored[b, position])
            stage: Stage = ("rerank" if rank_by_score[position] != len(out)
                            else "score" if has_score else "retrieve")
            out.append(RankedItem(
                item_id=str(candidates.item_ids[b, position]), position=len(out) + 1,
                score=float(scored[b, position]) if has_score else retrieval,  # type: ignore[index]
                stage=stage, retrieval_score=retrieval, propensity=float(propensity[slot])))
        return out

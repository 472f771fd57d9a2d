"""The default last step: show the ``k`` best by score, deterministically (propensity 1)."""

from __future__ import annotations

import numpy as np

from ranking.pipeline.contracts import Candidates


def score_order(candidates: Candidates, scores: np.ndarray) -> np.ndarray:
    """Positions of each row's candidates, best first: scored items by score, then the items
    the scorer could not score by retrieval similarity, then padding. Ties keep retrieval
    order (stable sorts)."""
    n_rows, width = candidates.shape
    retrieval = np.where(candidates.mask, candidates.retrieval_scores, -np.inf)
    scored = candidates.mask & ~np.isnan(scores)
    # Three keys, last one primary for lexsort: group (scored, unscored, padding), then score,
    # then retrieval similarity; retrieval order breaks what is still tied.
    group = np.where(scored, 0, np.where(candidates.mask, 1, 2))
    primary = np.where(scored, -np.nan_to_num(scores, nan=0.0), 0.0)
    secondary = -retrieval
    order = np.lexsort((np.broadcast_to(np.arange(width), (n_rows, width)), secondary,
                        primary, group), axis=1)
    return order


class ScoreOrder:
    """The ``k`` best candidates by score (:func:`score_order`), each with propensity 1."""

    name = "score-order"

    def rerank(self, candidates: Candidates, scores: np.ndarray, k: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        n_rows, width = candidates.shape
        positions = np.full((n_rows, k), -1, dtype=np.int64)
        order = score_order(candidates, scores)[:, :k]
        real = np.take_along_axis(candidates.mask, order, axis=1)
        positions[:, : order.shape[1]] = np.where(real, order, -1)
        return positions, np.where(positions >= 0, 1.0, np.nan)

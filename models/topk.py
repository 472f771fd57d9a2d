"""Exact top-k over a whole catalog, a block of rows at a time, so that the score matrix of
many users by a large catalog is never held at once."""

from __future__ import annotations

from collections.abc import Callable

import torch

#: Scores computed at once: bounds memory on large catalogs.
SCORE_BLOCK = 1 << 24


def blockwise_topk(n_rows: int, n_items: int, k: int,
                   scores: Callable[[int, int], torch.Tensor], device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best columns of each row and their scores, each (n_rows, k), best first;
    ``scores(start, stop)`` gives rows ``start:stop`` of the (n_rows, n_items) matrix."""
    step = max(1, SCORE_BLOCK // n_items)
    top_items, top_scores = [], []
    for start in range(0, n_rows, step):
        best, where = torch.topk(scores(start, min(n_rows, start + step)), k, dim=1)
        top_items.append(where)
        top_scores.append(best)
    if not top_items:
        empty = torch.empty((0, k), device=device)
        return empty.long(), empty
    return torch.cat(top_items), torch.cat(top_scores)

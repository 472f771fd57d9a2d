"""IR metrics on graded relevance, vectorized over a batch of ranked lists.

DCG@k = sum_p (2^g_p - 1) / log2(p + 1) and nDCG@k = DCG@k / ideal DCG@k (Jarvelin and
Kekalainen, "Cumulated gain-based evaluation of IR techniques", ACM TOIS 2002; the
exponential gain of Burges et al., ICML 2005).
"""

from __future__ import annotations

import numpy as np


def dcg_at_k(grades: np.ndarray, k: int | None = None) -> np.ndarray:
    """DCG of each row of ``grades`` (shape (n, slots)), truncated at ``k``."""
    grades = np.asarray(grades, dtype=np.float64)[..., :k]
    discounts = 1.0 / np.log2(np.arange(2, grades.shape[-1] + 2))
    return ((2.0 ** grades - 1.0) * discounts).sum(axis=-1)


def ndcg_at_k(grades: np.ndarray, ideal_grades: np.ndarray, k: int | None = None
              ) -> np.ndarray:
    """nDCG of each row; ``ideal_grades`` holds the best possible grades for that row (any
    order: they are sorted here). Rows whose ideal DCG is 0 score 0."""
    ideal = np.sort(np.asarray(ideal_grades), axis=-1)[..., ::-1]
    best = dcg_at_k(ideal, k)
    return np.divide(dcg_at_k(grades, k), best, out=np.zeros_like(best), where=best > 0)

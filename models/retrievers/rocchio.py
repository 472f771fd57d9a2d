"""Counterfactual Rocchio: repeated queries move toward the items clicked for them.

Zhuang, Li and Zuccon, "Implicit Feedback for Dense Passage Retrieval: A Counterfactual
Approach", SIGIR 2022 (CoRocchio). Rocchio feedback for dense retrievers adds the vectors of
feedback passages to the query vector (Rocchio, "Relevance feedback in information retrieval",
1971; Li et al., "Pseudo relevance feedback with deep language models and dense retrievers",
2021). With clicks as the feedback, position bias creeps in: an item shown on top is clicked
more because it is examined more. Counterfactual Rocchio weights each click by the inverse of
its position's examination propensity ``theta``, which removes that bias:

    q' = normalize(alpha * q + (1 - alpha) * m_q),
    m_q = (1 / n_q) * sum over the query's impressions and their clicked slots i of
          v_i / max(theta_i, clip)

where ``n_q`` is the number of impressions of the query. Under the position-based model a
slot is clicked with probability ``theta_i * P(relevant_i)``, so each impression's term has
expectation ``sum_i P(relevant_i) v_i``: ``m_q`` is an unbiased estimate of the Rocchio term
that the true relevance of the shown items would give, the property Zhuang et al. prove, as
long as no ``theta`` falls below ``clip`` (clipping trades that little bias for weights of at
most ``1 / clip``). Dividing by ``n_q`` rather than by the sum of the weights keeps this
estimator unbiased (the self-normalized version is a ratio estimator, biased for finite
``n_q``) and keeps the move proportional to how often the query's results were found
relevant: a query whose results are never clicked stays where it is, and one lucky click in
a hundred impressions moves it little.

Queries are keyed by their normalized text (lowercase, whitespace collapsed,
:func:`normalize_query`). The learned state is a sufficient statistic, the weighted click
sum and the impression count per query, so :meth:`CounterfactualRocchio.partial_fit` adds
more log exactly and the functional core (:func:`click_sums`, :func:`rocchio_move`) is pure
numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.exceptions import NotFittedError

from models.propensity import clip_propensities


def _check(name: str, value: Any, ok: bool, rule: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r:.80} must {rule}")


def normalize_query(query: str) -> str:
    """The key of a query: lowercase, runs of whitespace made one space, stripped."""
    return " ".join(query.lower().split())


def click_sums(groups: np.ndarray, slates: np.ndarray, clicks: np.ndarray,
               weights: np.ndarray, item_vectors: np.ndarray, n_groups: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Per group (query): ``sum of weights[i] * item_vectors[slates[i]]`` over clicked slots,
    (n_groups, d) float64, and the impression count, (n_groups,) int64.

    ``groups`` (n,) int in [0, n_groups); ``slates`` (n, k) item rows, -1 for an empty slot;
    ``clicks`` (n, k) bool; ``weights`` (n, k) inverse propensities.
    """
    impressions = np.bincount(groups, minlength=n_groups).astype(np.int64)
    rows, cols = np.nonzero(clicks & (slates >= 0))
    sums = np.zeros((n_groups, item_vectors.shape[1]), dtype=np.float64)
    if len(rows):
        contrib = weights[rows, cols, None] * item_vectors[slates[rows, cols]]
        np.add.at(sums, groups[rows], contrib)
    return sums, impressions


def rocchio_move(vectors: np.ndarray, sums: np.ndarray, impressions: np.ndarray,
                 alpha: float) -> np.ndarray:
    """``normalize(alpha * q + (1 - alpha) * sums / impressions)`` row by row, float32; a row
    whose result is zero (alpha 0 and no clicks) keeps its ``q``."""
    centroid = sums / np.maximum(impressions, 1)[:, None]
    moved = alpha * vectors.astype(np.float64) + (1 - alpha) * centroid
    norms = np.linalg.norm(moved, axis=1, keepdims=True)
    keep = norms[:, 0] == 0
    moved = moved / np.where(keep[:, None], 1.0, norms)
    moved[keep] = vectors[keep]
    return moved.astype(np.float32)


@dataclass(frozen=True)
class CounterfactualRocchio:
    """Query vectors moved toward their propensity-weighted clicks (see the module doc).

    ``alpha``: weight of the original query vector (1: no move); ``clip``: propensities below
    it count as ``clip``; ``min_impressions``: queries seen fewer times stay unchanged.

    Learned state: ``queries_`` (normalized query -> row), ``click_sums_`` (n_queries, d)
    float64 weighted click sums, ``impressions_`` (n_queries,) int64; ``centroids_`` is their
    ratio, ``m_q`` of the module doc.
    """

    alpha: float = 0.5
    clip: float = 0.05
    min_impressions: int = 1

    def __post_init__(self) -> None:
        _check("alpha", self.alpha, isinstance(self.alpha, (int, float))
               and 0 <= self.alpha <= 1, "be in [0, 1]")
        _check("clip", self.clip, isinstance(self.clip, (int, float)) and 0 < self.clip <= 1,
               "be in (0, 1]")
        _check("min_impressions", self.min_impressions,
               isinstance(self.min_impressions, int) and not isinstance(self.min_impressions,
                                                                        bool)
               and self.min_impressions >= 1, "be an int >= 1")

    # -- fitting ------------------------------------------------------------------------------
    def fit(self, queries: Sequence[str], slates: ArrayLike, clicks: ArrayLike,
            propensity: ArrayLike, item_vectors: ArrayLike) -> CounterfactualRocchio:
        """Learn from a click log of ``n`` impressions, forgetting earlier state.

        ``queries``: the query text of each impression; ``slates`` (n, k): rows of
        ``item_vectors`` shown, best position first, -1 for an empty slot; ``clicks`` (n, k)
        bool or 0/1; ``propensity``: examination probability of each slot, (k,) by position
        or (n, k); ``item_vectors`` (n_items, d), the vectors queries move toward.
        """
        for name in ("queries_", "click_sums_", "impressions_"):
            self.__dict__.pop(name, None)
        return self.partial_fit(queries, slates, clicks, propensity, item_vectors)

    def partial_fit(self, queries: Sequence[str], slates: ArrayLike, clicks: ArrayLike,
                    propensity: ArrayLike, item_vectors: ArrayLike) -> CounterfactualRocchio:
        """Add a log (same arguments as :meth:`fit`) to what was learned."""
        keys = _check_queries(queries)
        s, c, w, v = self._check_log(len(keys), slates, clicks, propensity, item_vectors)
        index: dict[str, int] = dict(self.__dict__.get("queries_", {}))
        sums = self.__dict__.get("click_sums_")
        if sums is not None and sums.shape[1] != v.shape[1]:
            raise ValueError(f"item_vectors.shape[1]={v.shape[1]} must equal the fitted "
                             f"dimension {sums.shape[1]}")
        groups = np.fromiter((index.setdefault(k, len(index)) for k in keys), dtype=np.int64,
                             count=len(keys))
        new_sums, new_counts = click_sums(groups, s, c, w, v, len(index))
        if sums is not None:
            new_sums[: len(sums)] += sums
            new_counts[: len(sums)] += self.impressions_
        self._learn(queries_=index, click_sums_=new_sums, impressions_=new_counts)
        return self

    def _check_log(self, n: int, slates: ArrayLike, clicks: ArrayLike, propensity: ArrayLike,
                   item_vectors: ArrayLike
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        v = np.asarray(item_vectors, dtype=np.float64)
        _check("item_vectors.shape", v.shape, v.ndim == 2 and v.shape[1] >= 1,
               "be (n_items, d)")
        _check("item_vectors", "non-finite values", bool(np.isfinite(v).all()), "be finite")
        s = np.asarray(slates)
        _check("slates.shape", s.shape, s.ndim == 2 and len(s) == n,
               f"be (n, k) with n={n} (one row per query)")
        _check("slates.dtype", s.dtype, s.size == 0 or np.issubdtype(s.dtype, np.integer),
               "be integer")
        s = s.astype(np.int64)
        bad = s >= len(v)
        _check("slates", s[bad][:1].tolist(), not bad.any(),
               f"hold rows of item_vectors (< {len(v)}) or -1")
        bad = s < -1
        _check("slates", s[bad][:1].tolist(), not bad.any(), "be >= -1 (-1: empty slot)")
        c = np.asarray(clicks)
        _check("clicks.shape", c.shape, c.shape == s.shape, f"equal slates.shape={s.shape}")
        _check("clicks", np.unique(c)[:4].tolist(), bool(np.isin(c, (0, 1)).all()),
               "be bool or 0/1")
        c = c.astype(bool)
        _check("clicks", "a click on an empty slot", not (c & (s < 0)).any(),
               "be False where slates is -1")
        p = np.asarray(propensity, dtype=np.float64)
        _check("propensity.shape", p.shape, p.shape in ((s.shape[1],), s.shape),
               f"be (k,)=({s.shape[1]},) or (n, k)={s.shape}")
        w = 1.0 / np.broadcast_to(clip_propensities(p, self.clip), s.shape)
        return s, c, w, v

    def _learn(self, **state: Any) -> None:
        # Learned state is not a hyper-parameter: written past the dataclass's freeze.
        for name, value in state.items():
            object.__setattr__(self, name, value)

    def _check_fitted(self) -> None:
        if "queries_" not in self.__dict__:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: "
                                 "call fit(...) first")

    @property
    def centroids_(self) -> np.ndarray:
        """``m_q`` per query row: weighted click sums over impression counts."""
        self._check_fitted()
        return self.click_sums_ / np.maximum(self.impressions_, 1)[:, None]

    # -- use ----------------------------------------------------------------------------------
    def transform(self, queries: Sequence[str], vectors: ArrayLike) -> np.ndarray:
        """(n, d) float32: the moved vector for queries seen at least ``min_impressions``
        times, the given vector (unchanged) for the others."""
        self._check_fitted()
        keys = _check_queries(queries)
        q = np.asarray(vectors, dtype=np.float32)
        d = self.click_sums_.shape[1]
        _check("vectors.shape", q.shape, q.shape == (len(keys), d),
               f"be (n, d)=({len(keys)}, {d})")
        rows = np.array([self.queries_.get(k, -1) for k in keys], dtype=np.int64)
        seen = rows >= 0
        seen[seen] = self.impressions_[rows[seen]] >= self.min_impressions
        out = q.copy()
        if seen.any():
            r = rows[seen]
            out[seen] = rocchio_move(q[seen], self.click_sums_[r], self.impressions_[r],
                                     self.alpha)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Hyper-parameters and learned state: ``queries`` (list of str) and two arrays, ready
        for JSON plus safetensors."""
        self._check_fitted()
        return {"alpha": self.alpha, "clip": self.clip, "min_impressions": self.min_impressions,
                "queries": list(self.queries_), "click_sums": self.click_sums_.copy(),
                "impressions": self.impressions_.copy()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> CounterfactualRocchio:
        model = cls(alpha=state["alpha"], clip=state["clip"],
                    min_impressions=state["min_impressions"])
        queries = list(state["queries"])
        sums = np.asarray(state["click_sums"], dtype=np.float64)
        counts = np.asarray(state["impressions"], dtype=np.int64)
        _check("click_sums.shape", sums.shape, sums.ndim == 2 and len(sums) == len(queries),
               f"be (n_queries, d) with n_queries={len(queries)}")
        _check("impressions.shape", counts.shape, counts.shape == (len(queries),),
               f"be ({len(queries)},)")
        model._learn(queries_={q: i for i, q in enumerate(queries)}, click_sums_=sums,
                     impressions_=counts)
        return model


def _check_queries(queries: Sequence[str]) -> list[str]:
    _check("queries", queries, not isinstance(queries, (str, bytes))
           and isinstance(queries, (Sequence, np.ndarray)), "be a sequence of strings")
    keys = []
    for i, query in enumerate(queries):
        _check(f"queries[{i}]", query, isinstance(query, str) and bool(query.strip()),
               "be a non-empty string")
        keys.append(normalize_query(query))
    return keys

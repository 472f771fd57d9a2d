"""IR metrics at a cutoff k, vectorized over users, and their inverse-propensity estimates
from biased click logs.

**Ranked lists.** Every metric takes ``relevance``, shape (U, L): row u is user (or query) u's
ranked list, column j the item at rank j + 1, the value its relevance (graded: any
non-negative number; binary: 0/1 or bool). It returns shape (U,), one value per user, with no
Python loop over users. Any leading shape works the same way: the last axis is the list.
Inputs are NumPy arrays (anything ``np.asarray`` takes, e.g. a torch tensor on the CPU,
detached).

**Ragged lists** are padded with NaN after their last item. A padded slot is not an item: it
gains nothing and is never relevant. NaN before a real entry is refused (ranks would shift).
Padding with 0 gives the same values for every metric here; NaN says it was padding.

**Relevant** means relevance > 0 (binarize graded labels yourself, e.g. ``grades >= 3``, for
another threshold). Recall and average precision need the number of relevant items the user
has (``n_relevant``), which may exceed those in the list; without it the list's own count is
used, which is right only when the list holds all of the user's items.

**Users without a positive** get 0 from every metric (as in scikit-learn's ``ndcg_score``),
so an average over every row, as an A/B test takes, stays defined. To report a metric only
over users who have something to find, as offline evaluation usually does, average with
:func:`mean_over_users`, which skips them.

Definitions, with rank r = 1, 2, ... and rel_r the relevance at rank r:

- DCG@k = sum_{r <= k} gain(rel_r) / log2(r + 1), with gain(rel) = rel by default and
  2^rel - 1 for ``gain="exponential"`` (Jarvelin and Kekalainen, "Cumulated gain-based
  evaluation of IR techniques", ACM TOIS 2002; the exponential gain of Burges et al.,
  "Learning to rank using gradient descent", ICML 2005). The discount is scikit-learn's
  (``dcg_score``); the paper's own, 1/log_b(r) from rank b on, leaves ranks 1 and 2 alike at
  b = 2, and some recommendation code (the Rel-MF evaluation among it) still uses that.
- nDCG@k = DCG@k / ideal DCG@k, the ideal being the best order of the same row or of a
  separate ``ideal`` matrix; 0 where the ideal DCG is 0.
- Recall@k = |relevant in the top k| / n_relevant.
- AP@k = sum_{r <= k, rel_r > 0} precision@r / min(n_relevant, k) (a perfect top k scores 1;
  with k=None the list is not cut and the denominator is n_relevant, which is scikit-learn's
  ``average_precision_score`` on a list that holds every item); MAP is its mean over users.
- RR@k = 1 / rank of the first relevant item in the top k (0 if none); MRR is its mean.

**Inverse-propensity (IPS) estimates.** A click log says what was clicked, not what is
relevant: an item is clicked only if it was examined, and examination depends on where it was
shown (position bias). Joachims, Swaminathan and Schnabel ("Unbiased learning-to-rank with
biased feedback", WSDM 2017) weight each click by the inverse of the probability that the
item was examined: for a metric that sums lambda(rank) over relevant items, such as DCG with
lambda(r) = 1/log2(r + 1) for r <= k,

    estimate(query) = sum over the query's clicked items of lambda(rank) / propensity,

is unbiased for the metric with relevance = P(click | examined) whenever every propensity is the
true examination probability of the position the item was shown at and positive. The ranking
evaluated can differ from the logged one (the items it ranks in its top k must have been shown;
one never shown counts 0). With the exposure propensity of each observed positive, the same sum
is, up to its normalization, the offline evaluator of recommenders from missing-not-at-random
feedback (Yang et al., "Unbiased offline recommender evaluation for missing-not-at-random
implicit feedback", RecSys 2018). :func:`ips_dcg_at_k` is this estimator and
:func:`ips_recall_at_k` its self-normalized ratio for recall. nDCG, AP and RR are not sums over
items of a function of the item's own rank (nDCG divides by an ideal that the clicks do not
reveal, AP and RR depend on which other items are relevant), so no estimator of this form is
unbiased for them, and none is offered.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Gain = Literal["linear", "exponential"]

__all__ = ["average_precision_at_k", "dcg_at_k", "ips_dcg_at_k", "ips_recall_at_k",
           "mean_over_users", "ndcg_at_k", "recall_at_k", "reciprocal_rank_at_k"]


def _check_k(k: int | None) -> None:
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
        raise ValueError(f"k={k!r} must be a positive integer or None (the whole list)")


def _relevance(relevance: np.ndarray, name: str = "relevance") -> np.ndarray:
    """Float copy of a (..., L) relevance array with padding (NaN) turned into 0."""
    values = np.asarray(relevance, dtype=np.float64)
    if values.ndim == 0:
        raise ValueError(f"{name} must have a list axis (shape (U, L)), got a scalar")
    padded = np.isnan(values)
    if padded.any():
        late = padded[..., :-1] & ~padded[..., 1:]
        if late.any():
            where = tuple(int(i) for i in np.argwhere(late)[0])
            raise ValueError(f"{name}{list(where)} is NaN before a real entry: NaN pads a "
                             "list after its last item only")
        values = np.where(padded, 0.0, values)
    if np.isinf(values).any() or (values < 0).any():
        where = tuple(int(i) for i in np.argwhere(np.isinf(values) | (values < 0))[0])
        raise ValueError(f"{name}{list(where)}={values[where]} must be finite and >= 0")
    return values


def _discounts(length: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, length + 2))


def _dcg(values: np.ndarray, k: int | None, gain: Gain) -> np.ndarray:
    values = values[..., :k]
    if gain == "exponential":
        values = np.exp2(values) - 1.0
    elif gain != "linear":
        raise ValueError(f"gain={gain!r} must be 'linear' or 'exponential'")
    return values @ _discounts(values.shape[-1])


def dcg_at_k(relevance: np.ndarray, k: int | None = None, *, gain: Gain = "linear"
             ) -> np.ndarray:
    """DCG@k of each ranked list: sum_{r <= k} gain(rel_r) / log2(r + 1) (module doc).

    ``relevance``: (U, L) in ranked order, NaN-padded; ``k``: cutoff (None: whole list);
    ``gain``: ``"linear"`` (rel) or ``"exponential"`` (2^rel - 1). Returns (U,).
    """
    _check_k(k)
    return _dcg(_relevance(relevance), k, gain)


def ndcg_at_k(relevance: np.ndarray, ideal: np.ndarray | None = None, k: int | None = None,
              *, gain: Gain = "linear") -> np.ndarray:
    """nDCG@k of each ranked list: DCG@k / ideal DCG@k, 0 where the ideal DCG is 0.

    The ideal is the best order of ``relevance``'s own row when ``ideal`` is None, which is
    right when the list holds all of the user's candidates. When the list is a subset (a top
    k of a larger pool), pass ``ideal``: (U, M), the relevance of every candidate of each
    user, in any order, NaN-padded; the ranked list's items must be among them, or nDCG can
    exceed 1. ``k`` and ``gain`` as in :func:`dcg_at_k`. Returns (U,).
    """
    if ideal is not None and np.ndim(ideal) == 0:
        raise TypeError(f"ideal={ideal!r} is a scalar: pass the cutoff as k=, "
                        "ndcg_at_k(relevance, ideal=None, k=None)")
    _check_k(k)
    values = _relevance(relevance)
    best = values if ideal is None else _relevance(ideal, "ideal")
    if best.shape[:-1] != values.shape[:-1]:
        raise ValueError(f"ideal has shape {best.shape}: it needs one row per ranked list "
                         f"{values.shape[:-1]}")
    best = -np.sort(-best, axis=-1)
    ideal_dcg = _dcg(best, k, gain)
    return np.divide(_dcg(values, k, gain), ideal_dcg, out=np.zeros_like(ideal_dcg),
                     where=ideal_dcg > 0)


def _relevant(relevance: np.ndarray) -> np.ndarray:
    return _relevance(relevance) > 0


def _n_relevant(relevant: np.ndarray, n_relevant: np.ndarray | None) -> np.ndarray:
    in_list = relevant.sum(axis=-1)
    if n_relevant is None:
        return in_list.astype(np.float64)
    n = np.broadcast_to(np.asarray(n_relevant, dtype=np.float64), in_list.shape)
    if (n < in_list).any():
        where = tuple(int(i) for i in np.argwhere(n < in_list)[0])
        raise ValueError(f"n_relevant{list(where)}={n[where]:g} is below the "
                         f"{in_list[where]} relevant items in that list")
    return n


def recall_at_k(relevance: np.ndarray, n_relevant: np.ndarray | None = None,
                k: int | None = None) -> np.ndarray:
    """Recall@k of each ranked list: relevant items in the top k / ``n_relevant``.

    ``relevance``: (U, L) in ranked order, relevant where > 0, NaN-padded; ``n_relevant``:
    (U,) how many relevant items each user has in all (default: those in the list).
    0 for users without a relevant item. Returns (U,).
    """
    _check_k(k)
    relevant = _relevant(relevance)
    n = _n_relevant(relevant, n_relevant)
    hits = relevant[..., :k].sum(axis=-1)
    return np.divide(hits, n, out=np.zeros_like(n), where=n > 0)


def average_precision_at_k(relevance: np.ndarray, n_relevant: np.ndarray | None = None,
                           k: int | None = None) -> np.ndarray:
    """AP@k of each ranked list: the precision at each relevant rank r <= k, summed, over
    min(``n_relevant``, k) (over ``n_relevant`` when k is None). Arguments as in
    :func:`recall_at_k`; 0 for users without a relevant item. Returns (U,); their mean
    over users is MAP@k.
    """
    _check_k(k)
    relevant = _relevant(relevance)
    n = _n_relevant(relevant, n_relevant)
    top = relevant[..., :k].astype(np.float64)
    precision = np.cumsum(top, axis=-1) / np.arange(1, top.shape[-1] + 1)
    total = (precision * top).sum(axis=-1)
    denominator = n if k is None else np.minimum(n, k)
    return np.divide(total, denominator, out=np.zeros_like(n), where=denominator > 0)


def reciprocal_rank_at_k(relevance: np.ndarray, k: int | None = None) -> np.ndarray:
    """1 / the rank of the first relevant item in the top k, 0 if there is none
    (``relevance`` as in :func:`recall_at_k`). Returns (U,); the mean is MRR@k."""
    _check_k(k)
    top = _relevant(relevance)[..., :k]
    if top.shape[-1] == 0:
        return np.zeros(top.shape[:-1])
    first = np.argmax(top, axis=-1)
    return np.where(top.any(axis=-1), 1.0 / (first + 1), 0.0)


def mean_over_users(values: np.ndarray, n_relevant: np.ndarray) -> float:
    """Mean of per-user ``values`` over the users with at least one relevant item.

    Users whose ``n_relevant`` is 0 are skipped: a user with nothing to find says nothing
    about a ranking, and the metrics above give such users 0, which would pull the mean
    down. ``n_relevant``: (U,) counts or booleans, e.g. ``(relevance > 0).sum(axis=1)`` or
    the number of a user's positive test items. NaN when no user has a relevant item.
    Do not use it for the IPS estimates: there a query without a click is an observation
    of 0, and skipping it biases the estimate up.
    """
    values = np.asarray(values, dtype=np.float64)
    keep = np.asarray(n_relevant) > 0
    if keep.shape != values.shape:
        raise ValueError(f"values {values.shape} and n_relevant {keep.shape} must have the "
                         "same shape, one entry per user")
    return float(values[keep].mean()) if keep.any() else float("nan")


def _ips_sums(query: np.ndarray, rank: np.ndarray, clicked: np.ndarray,
              propensity: np.ndarray, k: int | None, clip: float | None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The clicked rows' query codes (np.unique order), inverse-propensity weights and
    ranks, and the number of queries."""
    _check_k(k)
    query = np.asarray(query)
    rank = np.asarray(rank, dtype=np.float64)
    clicked = np.asarray(clicked)
    propensity = np.asarray(propensity, dtype=np.float64)
    if not (query.ndim == 1 and query.shape == rank.shape == clicked.shape
            == propensity.shape):
        raise ValueError("query, rank, clicked and propensity must be 1-D arrays of the same "
                         f"length, one entry per logged row; got shapes {query.shape}, "
                         f"{rank.shape}, {clicked.shape}, {propensity.shape}")
    if clicked.dtype != bool:
        if not np.isin(clicked, (0, 1)).all():
            raise ValueError("clicked must be booleans or 0/1")
        clicked = clicked.astype(bool)
    if clip is not None and not 0 < clip <= 1:
        raise ValueError(f"clip={clip} must be in (0, 1]")
    _, codes = np.unique(query, return_inverse=True)
    n_queries = int(codes.max()) + 1 if codes.size else 0
    p = propensity[clicked]
    bad = ~((p > 0) & (p <= 1)) if clip is None else ~(p <= 1) | np.isnan(p)
    if bad.any():
        row = int(np.flatnonzero(clicked)[np.argmax(bad)])
        floor = "(0, 1]" if clip is None else "[0, 1] (clipped at clip)"
        raise ValueError(f"propensity[{row}]={propensity[row]} of a clicked row must be in "
                         f"{floor}: a click that could not be examined has no weight")
    r = rank[clicked]
    if (r < 1).any():
        row = int(np.flatnonzero(clicked)[np.argmax(r < 1)])
        raise ValueError(f"rank[{row}]={rank[row]} must be >= 1 (NaN or inf: not ranked)")
    weight = 1.0 / (p if clip is None else np.maximum(p, clip))
    return codes[clicked], weight, r, n_queries


def ips_dcg_at_k(query: np.ndarray, rank: np.ndarray, clicked: np.ndarray,
                 propensity: np.ndarray, k: int | None = None, *, clip: float | None = None
                 ) -> np.ndarray:
    """Unbiased estimate of each query's DCG@k from a click log (Joachims et al., WSDM 2017):
    sum over the query's clicked rows with rank <= k of 1 / (log2(rank + 1) propensity).

    One entry per logged row (an item shown for a query or user), all 1-D:

    - ``query``: any ids (request, user, ...); results come in ``np.unique(query)`` order;
    - ``rank``: the item's rank (1-based) in the ranking being evaluated; rows it does not
      rank, or ranks below k, count nothing (NaN or inf for "not ranked"). To evaluate the
      logged ranking itself, pass the logged position;
    - ``clicked``: bool;
    - ``propensity``: the probability that the item was examined where it was shown, e.g.
      the position-bias curve at the logged position (not the policy's probability of
      showing it there, which corrects a different bias); read only on clicked rows.

    The estimand is DCG@k with relevance = P(click | examined), linear gain; average over
    all logged queries, those without a click included (their estimate is 0).

    ``clip``: a floor on the propensity (weight at most 1/clip). It bounds the variance that
    rarely examined positions bring, at the price of underestimating what their clicks are
    worth (Strehl et al., "Learning from logged implicit exploration data", NeurIPS 2010;
    Ionides, "Truncated importance sampling", JCGS 2008). With propensity 1 everywhere this
    is the naive click-based estimate. Returns (Q,).
    """
    codes, weight, r, n_queries = _ips_sums(query, rank, clicked, propensity, k, clip)
    top = r <= (np.inf if k is None else k)
    contribution = np.zeros_like(weight)
    contribution[top] = weight[top] / np.log2(r[top] + 1)
    return np.bincount(codes, weights=contribution, minlength=n_queries)


def ips_recall_at_k(query: np.ndarray, rank: np.ndarray, clicked: np.ndarray,
                    propensity: np.ndarray, k: int | None = None, *,
                    clip: float | None = None) -> np.ndarray:
    """Recall@k of each query estimated from a click log: the inverse-propensity-weighted
    clicks ranked in the top k over all of the query's weighted clicks (arguments as in
    :func:`ips_dcg_at_k`).

    Numerator and denominator are each unbiased (for relevance = P(click | examined) over
    the logged items); their ratio is self-normalized, consistent but not unbiased per
    query (the SNIPS form of Swaminathan and Joachims, "The self-normalized estimator for
    counterfactual learning", NeurIPS 2015; used for recommendation by Yang et al., RecSys
    2018). 0 for queries without a click: average with :func:`mean_over_users` and the
    clicks per query to skip them. Returns (Q,).
    """
    codes, weight, r, n_queries = _ips_sums(query, rank, clicked, propensity, k, clip)
    top = r <= (np.inf if k is None else k)
    hits = np.bincount(codes, weights=np.where(top, weight, 0.0), minlength=n_queries)
    total = np.bincount(codes, weights=weight, minlength=n_queries)
    return np.divide(hits, total, out=np.zeros_like(total), where=total > 0)

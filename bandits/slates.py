"""Exploration over the scores of retrieved candidates, with the exact probability of what is
shown at every slot.

Two samplers, both batch-vectorized in torch over B requests x N candidates:

- :class:`PlackettLuce`: k draws without replacement, each with probability proportional to
  ``exp(score / temperature)`` among the items left;
- :class:`EpsilonMixture`: the top k by score, or with probability ``epsilon`` a uniformly
  random ordered k-subset of the candidates.

What is logged. A position-based off-policy estimator (independent-position IPS, the OBD
setting, where ``propensity_score`` is the probability of item i at position j) weights the
reward at slot j by ``pi_e(i at j) / pi_b(i at j)``, so each sampler returns the exact
*marginal* probability that the item shown at slot j is at slot j given the scores. Where an
estimator needs the probability of the whole ranking down to slot j (slate IPS, cascade-style
estimators), ``prefix_propensity`` gives that instead. Neither is a Monte Carlo estimate.

Both samplers also satisfy :class:`ranking.pipeline.Reranker`, so the pipeline's last step can
explore: ``Pipeline(index, ..., reranker=PlackettLuce(0.5))``.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import ArrayLike

from ranking.pipeline import Candidates, score_order

#: Rows are processed in chunks of at most this many (row, subset) cells, to bound memory.
_CHUNK_CELLS = 1 << 22


def _check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r} must be an integer >= 1")
    return k


def _inputs(scores: torch.Tensor | ArrayLike, mask: torch.Tensor | ArrayLike | None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores as float64 (B, N) and the mask of real candidates; a real candidate's score
    must be finite, since its probability is computed from it."""
    s = torch.as_tensor(scores).to(torch.float64)
    if s.ndim != 2:
        raise ValueError(f"scores.shape={tuple(s.shape)} must be (B, N)")
    m = (torch.ones_like(s, dtype=torch.bool) if mask is None
         else torch.as_tensor(mask, device=s.device).to(torch.bool))
    if m.shape != s.shape:
        raise ValueError(f"mask.shape={tuple(m.shape)} must equal scores.shape="
                         f"{tuple(s.shape)}")
    bad = m & ~torch.isfinite(s)
    if bad.any():
        b, n = (int(v) for v in torch.nonzero(bad)[0])
        raise ValueError(f"scores[{b}, {n}]={float(s[b, n])!r} must be finite for a real "
                         "candidate (mask it out, or give it a score)")
    return s, m


def _pad(positions: torch.Tensor, propensity: torch.Tensor, mask: torch.Tensor, k: int
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """-1 and NaN on the slots past a row's number of real candidates; widened to k slots."""
    n_real = mask.sum(dim=1, keepdim=True)
    width = positions.shape[1]
    if width < k:
        extra = (positions.shape[0], k - width)
        positions = torch.cat([positions, positions.new_full(extra, -1)], dim=1)
        propensity = torch.cat([propensity, propensity.new_full(extra, math.nan)], dim=1)
    slot = torch.arange(k, device=positions.device)
    shown = slot < n_real
    return (torch.where(shown, positions, -1),
            torch.where(shown, propensity, torch.full_like(propensity, math.nan)))


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
             ) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float64, device=device)


def _from_numpy_rng(rng: np.random.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(rng.random(shape))


def _to_rerank(positions: torch.Tensor, propensity: torch.Tensor
               ) -> tuple[np.ndarray, np.ndarray]:
    return (positions.cpu().numpy().astype(np.int64),
            propensity.cpu().numpy().astype(np.float64))


# -- Plackett-Luce -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _subset_tables(n: int, r: int, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The r-subsets of range(n) in colexicographic order (row s has colex rank s), the colex
    rank of each subset with its t-th member removed (column t), and a (C, n) float matrix,
    1 where an item is *not* in the subset."""
    if r == 0:
        return (torch.zeros((1, 0), dtype=torch.int64, device=device),
                torch.zeros((1, 0), dtype=torch.int64, device=device),
                torch.ones((1, n), dtype=torch.float64, device=device))
    binom = torch.tensor([[math.comb(a, b) for b in range(r + 1)] for a in range(n + 1)],
                         dtype=torch.int64, device=device)
    # itertools rather than torch.combinations, which builds an n**r grid first.
    combos = torch.tensor(list(itertools.combinations(range(n), r)), dtype=torch.int64,
                          device=device).reshape(-1, r)
    rank = binom[combos, torch.arange(1, r + 1, device=device)].sum(dim=1)
    # Cached and shared between calls: nothing below writes into these tables afterwards.
    subsets = torch.empty_like(combos)
    subsets[rank] = combos
    # Removing member t shifts the members above it down one place in the colex sum.
    drop = []
    for t in range(r):
        rest = torch.cat([subsets[:, :t], subsets[:, t + 1:]], dim=1)
        drop.append(binom[rest, torch.arange(1, r, device=device)].sum(dim=1))
    outside = torch.ones((len(subsets), n), dtype=torch.float64, device=device)
    outside.scatter_(1, subsets, 0.0)
    return subsets, torch.stack(drop, dim=1), outside


def plackett_luce_marginals(weights: torch.Tensor, k: int) -> torch.Tensor:
    """Exact P(item i at slot j), (B, k, N), for Plackett-Luce draws without replacement
    with (unnormalized, non-negative) ``weights`` (B, N); zero weight: never drawn.

    Dynamic programming over the sets of items that fill the slots above: with ``P(S)`` the
    probability that the first |S| slots hold exactly the set S (in any order) and ``R(S)``
    the weight left outside S,

        P(S) = sum_{a in S} P(S - a) w_a / R(S - a),
        P(i at slot |S| + 1) = w_i sum_{S not holding i} P(S) / R(S).

    ``R(S)`` and the sum over the sets not holding i are sums over complements (two matrix
    products with the (subsets x N) indicator of what is outside each set) rather than
    differences from a total, so that a dominant item does not cancel the precision of the
    small probabilities that inverse-propensity weights divide by. The cost is
    O(N sum_r C(N, r)), r < k, per row: cheap for small k or N (k = 3 of N = 20: 190
    subsets), exponential in k otherwise.
    """
    w = weights.to(torch.float64)
    rows, n = w.shape
    k = min(k, n)
    tables = [_subset_tables(n, r, w.device) for r in range(k)]
    chunk = max(1, _CHUNK_CELLS // max(len(t[0]) for t in tables))
    out = torch.zeros((rows, k, n), dtype=torch.float64, device=w.device)
    for lo in range(0, rows, chunk):
        wc = w[lo: lo + chunk]
        q = None
        for r, (subsets, drop, outside) in enumerate(tables):
            if r == 0:
                prob = torch.ones((len(wc), 1), dtype=torch.float64, device=w.device)
            else:
                prob = (q[:, drop] * wc[:, subsets]).sum(dim=2)  # type: ignore[index]
            left = wc @ outside.T
            # A set that exhausts a row's real candidates leaves nothing to draw after it.
            q = torch.where(left > 0, prob / torch.where(left > 0, left, 1.0), 0.0)
            out[lo: lo + chunk, r] = wc * (q @ outside)
    return out


def _subset_count(n: int, k: int) -> int:
    return max(math.comb(n, r) for r in range(min(k, n)))


@dataclass(frozen=True)
class PlackettLuce:
    """Plackett-Luce exploration: slot by slot, draw one of the items left with probability
    ``softmax(score / temperature)`` over them (Plackett, "The analysis of permutations",
    Applied Statistics 1975; Luce, "Individual Choice Behavior", 1959). All slots of all rows
    are drawn at once with the Gumbel-top-k trick: the top k of ``score / temperature + G``,
    G i.i.d. standard Gumbel, is such a draw (Kool, van Hoof and Welling, "Stochastic beams
    and where to find them", ICML 2019).

    Logged propensity: the exact marginal P(shown item at its slot | scores)
    (:func:`plackett_luce_marginals`), what a position-based estimator divides by.
    ``prefix_propensity`` gives the probability of the ranking down to each slot.

    ``shortlist``: explore among the ``shortlist`` best-scored candidates only (the others
    get probability 0, exactly); it bounds the cost of the exact marginals, which grows as
    N C(N, k - 1) per row (:func:`plackett_luce_marginals`). ``max_subsets``: above this
    C(N', k - 1) (N' the explored width) a call raises rather than run for minutes.
    Unscored candidates of the pipeline (NaN score: an item the scorer never saw) are
    explored with their row's lowest score, so a cold item is shown now and then, with a
    known probability.
    """

    temperature: float = 1.0
    shortlist: int | None = None
    max_subsets: int = 50_000
    name: str = field(default="plackett-luce", compare=False)

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < math.inf:
            raise ValueError(f"temperature={t!r} must be a finite number > 0")
        s = self.shortlist
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 1):
            raise ValueError(f"shortlist={s!r} must be an integer >= 1 or None")
        m = self.max_subsets
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"max_subsets={m!r} must be an integer >= 1")

    # -- the distribution ----------------------------------------------------------------------
    def _check_shortlist(self, k: int) -> None:
        # A shortlist shorter than the slate would silently show fewer than k items.
        if self.shortlist is not None and self.shortlist < k:
            raise ValueError(f"shortlist={self.shortlist} must be >= k={k}: the slate is "
                             "drawn from the shortlist")

    def _restrict(self, s: torch.Tensor, m: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Scores and mask of the explored candidates, and their columns in the full row
        (None when all are explored)."""
        if self.shortlist is None or self.shortlist >= s.shape[1]:
            return s, m, None
        keyed = torch.where(m, s, -math.inf)
        cols = torch.sort(keyed, dim=1, descending=True, stable=True).indices
        cols = cols[:, : self.shortlist]
        return s.gather(1, cols), m.gather(1, cols), cols

    def _weights(self, s: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (padding: -inf) and weights normalized per row (padding: 0)."""
        logits = torch.where(m, s / self.temperature, -math.inf)
        top = logits.max(dim=1, keepdim=True).values
        top = torch.where(torch.isfinite(top), top, 0.0)
        w = torch.exp(logits - top)
        return logits, w / w.sum(dim=1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)

    def _check_cost(self, n: int, k: int) -> None:
        count = _subset_count(n, k)
        if count > self.max_subsets:
            raise ValueError(
                f"k={k} over {n} candidates needs {count} subsets per row for the exact "
                f"propensities, above max_subsets={self.max_subsets}: set shortlist (e.g. "
                f"shortlist={2 * k}) to explore among the best candidates only")

    def marginals(self, scores: torch.Tensor | ArrayLike, k: int,
                  mask: torch.Tensor | ArrayLike | None = None) -> torch.Tensor:
        """Exact P(candidate n at slot j), shape (B, k, N), float64."""
        k = _check_k(k)
        s, m = _inputs(scores, mask)
        self._check_shortlist(k)
        s_in, m_in, cols = self._restrict(s, m)
        self._check_cost(s_in.shape[1], k)
        _, w = self._weights(s_in, m_in)
        inner = plackett_luce_marginals(w, k)
        out = torch.zeros((s.shape[0], k, s.shape[1]), dtype=torch.float64, device=s.device)
        if cols is None:
            out[:, : inner.shape[1]] = inner
        else:
            index = cols[:, None, :].expand(-1, inner.shape[1], -1)
            out[:, : inner.shape[1]].scatter_(2, index, inner)
        return out

    def prefix_propensity(self, scores: torch.Tensor | ArrayLike, positions: torch.Tensor,
                          mask: torch.Tensor | ArrayLike | None = None) -> torch.Tensor:
        """The probability of the shown ranking down to each slot, (B, k): the product of
        the sequential choice probabilities; NaN on padding (position -1)."""
        s, m = _inputs(scores, mask)
        positions = torch.as_tensor(positions, device=s.device)
        s_in, m_in, cols = self._restrict(s, m)
        _, w = self._weights(s_in, m_in)
        if cols is not None:
            # Back to the explored columns; a shown item outside the shortlist had probability 0.
            full = torch.full_like(s, 0.0)
            full.scatter_(1, cols, w)
            w = full
        shown = positions >= 0
        pos = positions.clamp_min(0)
        chosen = torch.where(shown, w.gather(1, pos), 0.0)
        # Weight left before slot j: the total minus nothing shown yet, summed over the rest.
        taken = torch.zeros_like(w, dtype=torch.bool)
        left = []
        for j in range(positions.shape[1]):
            left.append(torch.where(taken, 0.0, w).sum(dim=1))
            taken = taken | torch.zeros_like(taken).scatter_(1, pos[:, j: j + 1],
                                                             shown[:, j: j + 1])
        step = chosen / torch.stack(left, dim=1).clamp_min(torch.finfo(w.dtype).tiny)
        prob = torch.cumprod(step, dim=1)
        return torch.where(shown, prob, torch.full_like(prob, math.nan))

    # -- drawing -------------------------------------------------------------------------------
    def _draw(self, s: torch.Tensor, m: torch.Tensor, k: int, uniform: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_shortlist(k)
        s_in, m_in, cols = self._restrict(s, m)
        self._check_cost(s_in.shape[1], k)
        logits, w = self._weights(s_in, m_in)
        u = uniform[:, : s_in.shape[1]].clamp(torch.finfo(torch.float64).tiny, 1.0)
        keys = torch.where(m_in, logits - torch.log(-torch.log(u)), -math.inf)
        width = min(k, s_in.shape[1])
        inner = torch.topk(keys, width, dim=1).indices
        marg = plackett_luce_marginals(w, width)
        slot = torch.arange(width, device=s.device)
        propensity = marg[:, slot, :].gather(2, inner[:, :, None]).squeeze(2)
        positions = inner if cols is None else cols.gather(1, inner)
        return _pad(positions, propensity, m_in, k)

    def sample(self, scores: torch.Tensor | ArrayLike, k: int, *,
               mask: torch.Tensor | ArrayLike | None = None,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One slate per row: ``positions`` (B, k) int64 indices into N (-1 where a row has
        fewer than k real candidates) and ``propensity`` (B, k) float64, the exact marginal
        probability of each shown item at its slot (NaN on padding)."""
        k = _check_k(k)
        s, m = _inputs(scores, mask)
        return self._draw(s, m, k, _uniform(tuple(s.shape), generator, s.device))

    def rerank(self, candidates: Candidates, scores: np.ndarray, k: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The :class:`ranking.pipeline.Reranker` step (see the class doc for NaN scores)."""
        k = _check_k(k)
        s, m = _pipeline_inputs(candidates, scores)
        s = torch.where(m & torch.isnan(s), _row_floor(s, m), s)
        return _to_rerank(*self._draw(s, m, k, _from_numpy_rng(rng, tuple(s.shape))))


def _pipeline_inputs(candidates: Candidates, scores: np.ndarray
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    m = torch.as_tensor(np.asarray(candidates.mask, dtype=bool))
    if s.shape != m.shape:
        raise ValueError(f"scores.shape={tuple(s.shape)} must equal the candidates' shape "
                         f"{tuple(m.shape)}")
    return s, m


def _row_floor(s: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Each row's lowest real score, (B, 1); 0 for a row with none scored."""
    known = m & ~torch.isnan(s)
    low = torch.where(known, s, math.inf).min(dim=1, keepdim=True).values
    return torch.where(torch.isfinite(low), low, 0.0)


# -- epsilon mixture ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EpsilonMixture:
    """Per request: with probability ``1 - epsilon`` the top k by score, with probability
    ``epsilon`` a uniformly random ordered k-subset of its N real candidates (the slate form
    of epsilon-greedy; Sutton and Barto, "Reinforcement Learning: An Introduction", 1998).

    Exact marginal of item i at slot j: ``(1 - epsilon) [i is the top k's j-th] +
    epsilon / N``, closed form; ``prefix_propensity`` gives the probability of the ranking
    down to slot j, ``(1 - epsilon) [it is the top ranking's prefix] + epsilon / (N (N - 1)
    ... (N - j + 1))``. Ties in score keep candidate order, so the top k is one fixed
    ranking. In the pipeline, the top k is its score order
    (:func:`ranking.pipeline.score_order`: unscored candidates after scored ones).
    """

    epsilon: float = 0.1
    name: str = field(default="epsilon-mixture", compare=False)

    def __post_init__(self) -> None:
        e = self.epsilon
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 <= e <= 1:
            raise ValueError(f"epsilon={e!r} must be a number in [0, 1]")

    @staticmethod
    def _greedy(s: torch.Tensor, m: torch.Tensor, k: int) -> torch.Tensor:
        keyed = torch.where(m, s, -math.inf)
        return torch.sort(keyed, dim=1, descending=True, stable=True).indices[:, :k]

    def marginals(self, scores: torch.Tensor | ArrayLike, k: int,
                  mask: torch.Tensor | ArrayLike | None = None) -> torch.Tensor:
        """Exact P(candidate n at slot j), shape (B, k, N), float64 (0 on padding)."""
        k = _check_k(k)
        s, m = _inputs(scores, mask)
        n_real = m.sum(dim=1).to(torch.float64)
        width = min(k, s.shape[1])
        greedy = self._greedy(s, m, width)
        slot = torch.arange(width, device=s.device)
        live = (slot[None, :] < n_real[:, None])  # (B, width): slots a row can fill
        out = torch.zeros((s.shape[0], k, s.shape[1]), dtype=torch.float64, device=s.device)
        uniform = self.epsilon / n_real.clamp_min(1.0)
        out[:, :width] = torch.where(live[:, :, None] & m[:, None, :],
                                     uniform[:, None, None], 0.0)
        top = torch.zeros((s.shape[0], width, s.shape[1]), dtype=torch.float64,
                          device=s.device).scatter_(2, greedy[:, :, None], 1.0 - self.epsilon)
        out[:, :width] += torch.where(live[:, :, None], top, 0.0)
        return out

    def prefix_propensity(self, scores: torch.Tensor | ArrayLike, positions: torch.Tensor,
                          mask: torch.Tensor | ArrayLike | None = None) -> torch.Tensor:
        """The probability of the shown ranking down to each slot, (B, k); NaN on padding."""
        s, m = _inputs(scores, mask)
        positions = torch.as_tensor(positions, device=s.device)
        k = positions.shape[1]
        greedy = self._greedy(s, m, k)
        if greedy.shape[1] < k:
            greedy = torch.cat([greedy, greedy.new_full((len(s), k - greedy.shape[1]), -1)], 1)
        same = torch.cumprod((positions == greedy).to(torch.float64), dim=1)
        n_real = m.sum(dim=1, keepdim=True).to(torch.float64)
        slot = torch.arange(k, device=s.device, dtype=torch.float64)
        uniform = torch.cumprod(1.0 / (n_real - slot).clamp_min(1.0), dim=1)
        prob = (1.0 - self.epsilon) * same + self.epsilon * uniform
        return torch.where(positions >= 0, prob, torch.full_like(prob, math.nan))

    def _draw(self, s: torch.Tensor, m: torch.Tensor, k: int, coin: torch.Tensor,
              keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        width = min(k, s.shape[1])
        greedy = self._greedy(s, m, width)
        shuffled = torch.topk(torch.where(m, keys, -math.inf), width, dim=1).indices
        explore = (coin < self.epsilon)[:, None]
        positions = torch.where(explore, shuffled, greedy)
        n_real = m.sum(dim=1, keepdim=True).to(torch.float64)
        propensity = ((1.0 - self.epsilon) * (positions == greedy).to(torch.float64)
                      + self.epsilon / n_real.clamp_min(1.0))
        return _pad(positions, propensity, m, k)

    def sample(self, scores: torch.Tensor | ArrayLike, k: int, *,
               mask: torch.Tensor | ArrayLike | None = None,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One slate per row: ``positions`` (B, k) int64 indices into N (-1 on padding) and
        ``propensity`` (B, k) float64, the exact marginal of each shown item at its slot."""
        k = _check_k(k)
        s, m = _inputs(scores, mask)
        coin = _uniform((s.shape[0],), generator, s.device)
        keys = _uniform(tuple(s.shape), generator, s.device)
        return self._draw(s, m, k, coin, keys)

    def rerank(self, candidates: Candidates, scores: np.ndarray, k: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The :class:`ranking.pipeline.Reranker` step: the top k is the pipeline's score
        order, so unscored candidates follow scored ones by retrieval similarity."""
        k = _check_k(k)
        s, m = _pipeline_inputs(candidates, scores)
        order = torch.as_tensor(score_order(candidates, np.asarray(scores, dtype=np.float64)))
        # The score order as a score: rank 0 highest, no ties.
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(s.shape[1]).expand_as(
            order).contiguous())
        coin = _from_numpy_rng(rng, (s.shape[0],))
        keys = _from_numpy_rng(rng, tuple(s.shape))
        return _to_rerank(*self._draw(-rank.to(torch.float64), m, k, coin, keys))


# -- position-based click weights --------------------------------------------------------------


def click_weights(positions: torch.Tensor | ArrayLike, examination: torch.Tensor | ArrayLike,
                  *, max_weight: float | None = None) -> torch.Tensor:
    """Importance weights ``1 / theta_p`` for updates from a click at slot p, where
    ``theta_p`` is the examination probability of slot p under the position-based click
    model (Joachims, Swaminathan and Schnabel, "Unbiased learning-to-rank with biased
    feedback", WSDM 2017): a click observed at a rarely examined slot stands for more.

    ``positions``: any shape, **1-based** slots as logged with impressions (1 is the top);
    0 marks no slot (padding) and gets weight 0. ``examination``: (K,) probabilities in
    (0, 1], indexed by slot - 1 (e.g. ``examination_`` of a ``models.propensity`` curve, or a
    configured curve). ``max_weight``: clip the weights there (trading bias for variance).
    Returns float64 weights of ``positions``' shape, on its device.
    """
    p = torch.as_tensor(positions)
    if p.dtype.is_floating_point or p.dtype == torch.bool or p.dtype.is_complex:
        raise ValueError(f"positions dtype={p.dtype} must be an integer dtype (1-based slots)")
    theta = torch.as_tensor(examination, dtype=torch.float64, device=p.device)
    if theta.ndim != 1 or len(theta) == 0:
        raise ValueError(f"examination.shape={tuple(theta.shape)} must be (K,) with K >= 1")
    bad = ~((theta > 0) & (theta <= 1))
    if bad.any():
        j = int(torch.nonzero(bad)[0])
        raise ValueError(f"examination[{j}]={float(theta[j])!r} must be in (0, 1]")
    outside = (p < 0) | (p > len(theta))
    if outside.any():
        value = int(p[outside][0])
        raise ValueError(f"positions value {value} must be in [1, {len(theta)}] (1-based "
                         "slots of the examination curve), or 0 for padding")
    if max_weight is not None and not max_weight >= 1:
        raise ValueError(f"max_weight={max_weight!r} must be >= 1 or None")
    weight = 1.0 / theta[(p - 1).clamp_min(0)]
    if max_weight is not None:
        weight = weight.clamp_max(max_weight)
    return torch.where(p > 0, weight, 0.0)

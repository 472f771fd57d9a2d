"""What the linear bandit policies share: input checks, the per-arm ridge statistics kept with
their inverse (batched Woodbury updates, periodic Cholesky refactorization), and the
score / select / partial_fit / state_dict surface.

Shapes: ``x`` is (B, N, d) for scoring (B requests, N candidates each) and (n, d) for
updates (one row per shown item); ``arm`` indexes the per-arm models (0 when there is one
shared model). Statistics are float64 on the policy's ``device``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

DTYPE = torch.float64

#: Cap on the elements of one temporary (n, d, d) or (B, N, d, d) block, so a large batch
#: is processed in slices instead of allocating gigabytes at once.
_BLOCK = 1 << 22


def check(name: str, value: Any, ok: bool, rule: str) -> None:
    """Raise ``ValueError("name=value must rule")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{name}={value!r} must {rule}")


def check_ridge_shape(n_features: int, n_arms: int, ridge: float) -> None:
    """The hyper-parameters every ridge-based policy shares."""
    check("n_features", n_features, n_features >= 1, "be >= 1")
    check("n_arms", n_arms, n_arms >= 1, "be >= 1")
    check("ridge", ridge, ridge > 0, "be > 0")


def as_tensor(value: Any, device: torch.device, dtype: torch.dtype = DTYPE) -> Tensor:
    return torch.as_tensor(value, dtype=dtype, device=device)


def check_k(k: int, n: int) -> None:
    check("k", k, 1 <= k <= n, f"be in [1, {n}] (the candidates given)")


def top_k(scores: Tensor, k: int) -> Tensor:
    """Indices of the k highest scores per row, best first; ties go to the lower index so
    the same scores always give the same slate."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]


def spd_inverse(matrix: Tensor) -> Tensor:
    """Inverse of symmetric positive definite matrices (batched) through their Cholesky
    factor: cheaper and better conditioned than a general inverse."""
    return torch.cholesky_inverse(torch.linalg.cholesky(matrix))


def _symmetrize(matrix: Tensor) -> Tensor:
    # Rounding makes an updated inverse drift off symmetric, and that asymmetry compounds.
    return (matrix + matrix.transpose(-1, -2)) / 2


def woodbury(inverse: Tensor, rows: Tensor) -> Tensor:
    """``(A + S^T S)^-1`` from ``A^-1`` (G, d, d) and ``S`` (G, m, d), batched over G::

        (A + S^T S)^-1 = A^-1 - A^-1 S^T (I + S A^-1 S^T)^-1 S A^-1

    (Woodbury's identity; m = 1 is Sherman-Morrison). Rows of zeros pad groups of fewer
    than m rows and change nothing: they add 0 to ``S^T S`` and a unit block to the
    inner m x m matrix, which stays positive definite."""
    projected = rows @ inverse  # S A^-1, (G, m, d)
    inner = projected @ rows.transpose(-1, -2)
    inner.diagonal(dim1=-2, dim2=-1).add_(1.0)
    solved = torch.cholesky_solve(projected, torch.linalg.cholesky(inner))
    return _symmetrize(inverse - projected.transpose(-1, -2) @ solved)


def group_rows(rows: Tensor, arm: Tensor, arms: Tensor) -> Tensor:
    """The rows of each arm in ``arms`` (sorted, distinct) padded with zeros to the largest
    group: (len(arms), m, d). Rows whose arm is not in ``arms`` are dropped."""
    keep = torch.isin(arm, arms)
    rows, arm = rows[keep], arm[keep]
    order = torch.argsort(arm, stable=True)
    rows, arm = rows[order], arm[order]
    group = torch.searchsorted(arms, arm)
    counts = torch.bincount(group, minlength=len(arms))
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(arm), device=arm.device) - starts[group]
    width = int(counts.max()) if len(counts) else 0
    padded = rows.new_zeros((len(arms), width, rows.shape[1]))
    padded[group, slot] = rows
    return padded


class RidgeStatistics:
    """Per-arm ridge regression ``A_a = lambda I + sum w x x^T``, ``b_a = sum w r x`` with
    ``A_a^-1`` kept up to date, for K arms of d features.

    Each update adds its rows to ``A`` and ``b`` exactly. The inverse of an arm that got
    fewer rows than d in the update follows by Woodbury's identity (cheaper than a new
    factorization); an arm with d rows or more, or whose inverse has taken
    ``refactor_every`` Woodbury updates since its last factorization, gets a fresh
    Cholesky inverse of ``A``, which bounds the rounding error the updates accumulate.
    """

    def __init__(self, n_arms: int, n_features: int, ridge: float, refactor_every: int,
                 device: torch.device) -> None:
        self.ridge = ridge
        self.refactor_every = refactor_every
        eye = torch.eye(n_features, dtype=DTYPE, device=device)
        self.A = (ridge * eye).repeat(n_arms, 1, 1)
        self.A_inv = (eye / ridge).repeat(n_arms, 1, 1)
        self.b = torch.zeros(n_arms, n_features, dtype=DTYPE, device=device)
        self.since_refactor = torch.zeros(n_arms, dtype=torch.int64, device=device)

    @property
    def theta(self) -> Tensor:
        """The ridge solution of every arm, (K, d)."""
        return (self.A_inv @ self.b.unsqueeze(-1)).squeeze(-1)

    def update(self, x: Tensor, reward: Tensor, weight: Tensor, arm: Tensor) -> Tensor:
        """Add weighted rows; returns the arms touched (sorted)."""
        n, d = x.shape
        rows = x * weight.sqrt().unsqueeze(-1)
        self.b.index_add_(0, arm, x * (weight * reward).unsqueeze(-1))
        if self.A.shape[0] == 1:
            self.A[0] += rows.T @ rows
        else:
            step = max(1, _BLOCK // (d * d))
            for start in range(0, n, step):  # slices of a large batch, not one per event
                block = rows[start:start + step]
                self.A.index_add_(0, arm[start:start + step],
                                  block.unsqueeze(-1) * block.unsqueeze(-2))
        touched, counts = torch.unique(arm, return_counts=True)
        self.since_refactor[touched] += 1
        low_rank = (counts < d) & (self.since_refactor[touched] < self.refactor_every)
        patched = touched[low_rank]
        if len(patched):
            self.A_inv[patched] = woodbury(self.A_inv[patched], group_rows(rows, arm, patched))
        self.refactor(touched[~low_rank])
        return touched

    def refactor(self, arms: Tensor | None = None) -> None:
        """A fresh inverse of ``A`` for these arms (all when None)."""
        if arms is None:
            arms = torch.arange(self.A.shape[0], device=self.A.device)
        if len(arms):
            self.A_inv[arms] = spd_inverse(self.A[arms])
            self.since_refactor[arms] = 0


def gather_quadratic(x: Tensor, matrices: Tensor, arm: Tensor | None) -> Tensor:
    """``x^T M_a x`` for every (request, candidate): x (B, N, d), M (K, d, d), arm (B, N) or
    None for one shared matrix; (B, N)."""
    if arm is None:
        return torch.einsum("bnd,de,bne->bn", x, matrices[0], x)
    B, N, d = x.shape
    out = x.new_empty((B, N))
    step = max(1, _BLOCK // max(1, N * d * d))
    for start in range(0, B, step):  # slices of requests, so the gathered (., N, d, d) fits
        block = slice(start, start + step)
        out[block] = torch.einsum("bnd,bnde,bne->bn", x[block], matrices[arm[block]],
                                  x[block])
    return out


class LinearPolicy:
    """Shared surface of the linear policies: inputs, per-arm ridge statistics, top-k
    selection, updates and state. Subclasses define :meth:`score` and, when they explore
    at random, :meth:`select`.

    Hyper-parameters: ``n_features`` (d), ``n_arms`` (1: one model over all items, the
    usual case with item features in ``x``; K: one model per arm, LinUCB's disjoint
    form, with ``arm`` given to ``score`` and ``partial_fit``), ``ridge`` (lambda, the
    prior precision), ``refactor_every``, ``seed`` and ``device``.

    Learned: ``A_`` (K, d, d), ``A_inv_`` (K, d, d), ``b_`` (K, d), ``theta_`` (K, d),
    ``since_refactor_`` (K,), ``n_updates_`` (rows seen).
    """

    #: select() draws from a generator the policy owns when none is given.
    thread_safe = False
    name = "linear"

    def __init__(self, n_features: int, n_arms: int = 1, ridge: float = 1.0,
                 refactor_every: int = 100, seed: int = 0,
                 device: str | torch.device = "cpu") -> None:
        check_ridge_shape(n_features, n_arms, ridge)
        check("refactor_every", refactor_every, refactor_every >= 1, "be >= 1")
        self.n_features = n_features
        self.n_arms = n_arms
        self.ridge = ridge
        self.refactor_every = refactor_every
        self.seed = seed
        self.device = torch.device(device)
        self._stats = RidgeStatistics(n_arms, n_features, ridge, refactor_every, self.device)
        self.n_updates_ = 0
        self._theta: Tensor | None = None
        self._generator = torch.Generator(device=self.device).manual_seed(seed)

    # Learned state, named as the house style asks, kept in the statistics object.
    @property
    def A_(self) -> Tensor:
        return self._stats.A

    @property
    def A_inv_(self) -> Tensor:
        return self._stats.A_inv

    @property
    def b_(self) -> Tensor:
        return self._stats.b

    @property
    def since_refactor_(self) -> Tensor:
        return self._stats.since_refactor

    @property
    def theta_(self) -> Tensor:
        if self._theta is None:
            self._theta = self._stats.theta
        return self._theta

    # Inputs.
    def _scoring_input(self, x: Any, arm: Any) -> tuple[Tensor, Tensor | None]:
        x = as_tensor(x, self.device)
        check("x.shape", tuple(x.shape), x.ndim == 3 and x.shape[2] == self.n_features,
              f"be (B, N, {self.n_features})")
        return x, self._arm(arm, x.shape[:2], "(B, N)")

    def _arm(self, arm: Any, shape: tuple[int, ...], named: str) -> Tensor | None:
        if arm is None:
            check("arm", None, self.n_arms == 1,
                  f"be given: this policy has n_arms={self.n_arms} models")
            return None
        arm = torch.as_tensor(arm, dtype=torch.int64, device=self.device)
        check("arm.shape", tuple(arm.shape), tuple(arm.shape) == tuple(shape),
              f"be {named} = {tuple(shape)}")
        if arm.numel():
            low, high = int(arm.min()), int(arm.max())
            check("arm", low if low < 0 else high, low >= 0 and high < self.n_arms,
                  f"be in [0, {self.n_arms})")
        return arm

    def _update_input(self, x: Any, reward: Any, weight: Any, arm: Any
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = as_tensor(x, self.device)
        check("x.shape", tuple(x.shape), x.ndim == 2 and x.shape[1] == self.n_features,
              f"be (n, {self.n_features})")
        n = x.shape[0]
        reward = as_tensor(reward, self.device)
        check("reward.shape", tuple(reward.shape), tuple(reward.shape) == (n,), f"be ({n},)")
        if weight is None:
            weight = torch.ones(n, dtype=DTYPE, device=self.device)
        else:
            weight = as_tensor(weight, self.device)
            check("weight.shape", tuple(weight.shape), tuple(weight.shape) == (n,),
                  f"be ({n},)")
            bad = ~(weight >= 0)  # also catches NaN
            check("weight", weight[bad][:1].tolist(), not bool(bad.any()),
                  "be >= 0 (an importance weight)")
        arm_t = self._arm(arm, (n,), "(n,)")
        if arm_t is None:
            arm_t = torch.zeros(n, dtype=torch.int64, device=self.device)
        return x, reward, weight, arm_t

    def _generator_for(self, generator: torch.Generator | None) -> torch.Generator:
        return self._generator if generator is None else generator

    # Model.
    def mean(self, x: Any, arm: Any = None) -> Tensor:
        """The ridge estimate of the reward, ``x . theta_a``, (B, N)."""
        x, arm_t = self._scoring_input(x, arm)
        return self._mean(x, arm_t)

    def _mean(self, x: Tensor, arm: Tensor | None) -> Tensor:
        if arm is None:
            return x @ self.theta_[0]
        return (x * self.theta_[arm]).sum(-1)

    def _width(self, x: Tensor, arm: Tensor | None) -> Tensor:
        """``sqrt(x^T A_a^-1 x)``: the standard error of the estimate in units of the noise."""
        return gather_quadratic(x, self.A_inv_, arm).clamp_min(0).sqrt()

    def score(self, x: Any, arm: Any = None) -> Tensor:
        raise NotImplementedError

    def select(self, x: Any, k: int, generator: torch.Generator | None = None,
               arm: Any = None) -> tuple[Tensor, Tensor]:
        """The k candidates of highest :meth:`score` per request, best first, and their
        propensity: 1 for a deterministic score. Indices into N, (B, k)."""
        scores = self.score(x, arm)
        check_k(k, scores.shape[1])
        chosen = top_k(scores, k)
        return chosen, torch.ones(chosen.shape, dtype=DTYPE, device=self.device)

    def partial_fit(self, x: Any, reward: Any, weight: Any = None, arm: Any = None
                    ) -> LinearPolicy:
        """Learn from shown items: features (n, d), reward (n,), optional importance
        weight (n,) (e.g. 1 / examination propensity) and arm (n,)."""
        x, reward, weight, arm_t = self._update_input(x, reward, weight, arm)
        if len(x):
            self._stats.update(x, reward, weight, arm_t)
            self.n_updates_ += len(x)
            self._theta = None
        return self

    def refactor(self) -> None:
        """Recompute every inverse from ``A`` now."""
        self._stats.refactor()
        self._theta = None

    # State.
    def state_dict(self) -> dict[str, Tensor]:
        """The learned state as plain tensors (safetensors can save it)."""
        return {"A": self.A_.clone(), "A_inv": self.A_inv_.clone(), "b": self.b_.clone(),
                "since_refactor": self.since_refactor_.clone(),
                "n_updates": torch.tensor(self.n_updates_, dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, Tensor]) -> LinearPolicy:
        stats = self._stats
        values = loaded(state, {"A": stats.A, "A_inv": stats.A_inv, "b": stats.b,
                                "since_refactor": stats.since_refactor})
        stats.A, stats.A_inv, stats.b = values["A"], values["A_inv"], values["b"]
        stats.since_refactor = values["since_refactor"]
        self.n_updates_ = int(state["n_updates"])
        self._theta = None
        return self


def loaded(state: dict[str, Tensor], current: dict[str, Tensor]) -> dict[str, Tensor]:
    """Copies of ``state``'s tensors for the names of ``current``, on its devices and dtypes,
    after checking that each is there with the same shape."""
    values = {}
    for name, now in current.items():
        check("state", sorted(state), name in state, f"hold {name!r}")
        value = state[name]
        check(f"state[{name!r}].shape", tuple(value.shape),
              tuple(value.shape) == tuple(now.shape), f"be {tuple(now.shape)}")
        values[name] = value.to(device=now.device, dtype=now.dtype).clone()
    return values

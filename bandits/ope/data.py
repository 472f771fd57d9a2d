"""The logged data every off-policy estimator reads, and what each one returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class OPEInputError(ValueError):
    """Logged data or an estimator setting that off-policy evaluation cannot use; the message
    names the field and the value."""


def _array(name: str, value: object, ndim: int) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != ndim:
        raise OPEInputError(f"{name} has shape {array.shape}; it must have {ndim} dimensions")
    if not np.isfinite(array).all():
        raise OPEInputError(f"{name} holds a value that is not finite")
    return array


@dataclass(frozen=True)
class OPEData:
    """n logged rows of a bandit, single slot (``n_positions == 1``) or position-based slates
    (one row per shown (round, position), the Open Bandit Dataset's layout).

    ``reward (n,)``, ``action (n,)`` (0..n_actions-1), ``position (n,)`` (0..n_positions-1),
    ``pscore (n,)`` (the logging policy's probability of the action at its position),
    ``action_dist (n, n_actions, n_positions)`` (the evaluation policy's probabilities; each
    (row, position) column sums to 1) and, for the estimators that use a reward model,
    ``estimated_rewards`` of the same shape (q-hat of every action at every position)."""

    reward: np.ndarray
    action: np.ndarray
    position: np.ndarray
    pscore: np.ndarray
    action_dist: np.ndarray
    estimated_rewards: np.ndarray | None = None

    def __post_init__(self) -> None:
        arrays = {"reward": _array("reward", self.reward, 1),
                  "pscore": _array("pscore", self.pscore, 1),
                  "action_dist": _array("action_dist", self.action_dist, 3)}
        for name in ("action", "position"):
            raw = np.asarray(getattr(self, name))
            if raw.ndim != 1 or not (np.issubdtype(raw.dtype, np.integer) or raw.size == 0):
                raise OPEInputError(f"{name} must be a 1-d array of integers, not "
                                    f"{raw.dtype}{raw.shape}")
            arrays[name] = raw.astype(np.int64)
        if self.estimated_rewards is not None:
            arrays["estimated_rewards"] = _array("estimated_rewards", self.estimated_rewards, 3)
        for name, array in arrays.items():
            object.__setattr__(self, name, array)
        n, dist = arrays["reward"].shape[0], arrays["action_dist"]
        if n == 0:
            raise OPEInputError("reward is empty: there is no logged row to evaluate from")
        for name in ("action", "position", "pscore"):
            if arrays[name].shape[0] != n:
                raise OPEInputError(f"{name} has {arrays[name].shape[0]} rows; reward has {n}")
        if dist.shape[0] != n:
            raise OPEInputError(f"action_dist has {dist.shape[0]} rows; reward has {n}")
        n_actions, n_positions = dist.shape[1:]
        for name, top in (("action", n_actions), ("position", n_positions)):
            bad = (arrays[name] < 0) | (arrays[name] >= top)
            if bad.any():
                raise OPEInputError(f"{name}={arrays[name][bad][0]} (row {np.argmax(bad)}) "
                                    f"must be in 0..{top - 1}")
        bad = (arrays["pscore"] <= 0) | (arrays["pscore"] > 1)
        if bad.any():
            raise OPEInputError(f"pscore={arrays['pscore'][bad][0]} (row {np.argmax(bad)}) must "
                                "be in (0, 1]: a logged action had a chance to be shown")
        if (dist < 0).any() or not np.allclose(dist.sum(axis=1), 1.0, atol=1e-6):
            raise OPEInputError("action_dist must be probabilities that sum to 1 over the "
                                "actions at every row and position")
        q = arrays.get("estimated_rewards")
        if q is not None and q.shape != dist.shape:
            raise OPEInputError(f"estimated_rewards has shape {q.shape}; action_dist has "
                                f"{dist.shape}")

    @property
    def n(self) -> int:
        return int(self.reward.shape[0])

    @property
    def n_actions(self) -> int:
        return int(self.action_dist.shape[1])

    @property
    def n_positions(self) -> int:
        return int(self.action_dist.shape[2])

    def _rows(self) -> np.ndarray:
        return np.arange(self.n)

    @property
    def weight(self) -> np.ndarray:
        """pi(action | row, position) / pscore, the importance weight of each row."""
        return self.action_dist[self._rows(), self.action, self.position] / self.pscore

    def policy_probability(self) -> np.ndarray:
        """pi(action | row, position) of each logged row."""
        return self.action_dist[self._rows(), self.action, self.position]

    def require_rewards(self, estimator: str) -> np.ndarray:
        if self.estimated_rewards is None:
            raise OPEInputError(f"estimated_rewards=None: {estimator} needs a reward model's "
                                "predictions (see bandits.ope.cross_fit)")
        return self.estimated_rewards

    def logged_q(self, estimator: str) -> np.ndarray:
        """q-hat of the logged action at its position, (n,)."""
        q = self.require_rewards(estimator)
        return q[self._rows(), self.action, self.position]

    def policy_q(self, estimator: str) -> np.ndarray:
        """sum_a pi(a | row, position) q-hat(row, a, position): the direct method's term, (n,)."""
        q = self.require_rewards(estimator)
        rows = self._rows()
        return np.einsum("na,na->n", self.action_dist[rows, :, self.position],
                         q[rows, :, self.position])

    def take(self, rows: np.ndarray) -> OPEData:
        """The rows ``rows`` (repeats allowed), e.g. a bootstrap resample."""
        q = None if self.estimated_rewards is None else self.estimated_rewards[rows]
        return OPEData(self.reward[rows], self.action[rows], self.position[rows],
                       self.pscore[rows], self.action_dist[rows], q)

    def with_rewards(self, estimated_rewards: np.ndarray) -> OPEData:
        return OPEData(self.reward, self.action, self.position, self.pscore, self.action_dist,
                       estimated_rewards)


@dataclass(frozen=True)
class Estimate:
    """An estimate of the evaluation policy's mean reward per row, in a form every estimator
    here shares: ``value = mean(direct) + sum(weighted) / sum(normalizer)``.

    Plain estimators have ``normalizer`` all ones, so the value is the mean of
    ``per_sample``; self-normalized ones divide by the sum of their weights instead. Keeping
    the three terms apart lets a bootstrap resample recompute any estimator from counts alone
    (:func:`bandits.ope.bootstrap.resampled_values`). ``hyperparameter`` is the threshold or
    shrinkage an estimator used (chosen by SLOPE where it was tuned)."""

    direct: np.ndarray
    weighted: np.ndarray
    normalizer: np.ndarray
    hyperparameter: float | None = None
    per_sample: np.ndarray = field(init=False, repr=False)
    value: float = field(init=False)

    def __post_init__(self) -> None:
        n = self.direct.shape[0]
        if self.weighted.shape != (n,) or self.normalizer.shape != (n,):
            raise OPEInputError(f"direct, weighted and normalizer must all have shape ({n},); "
                                f"got {self.weighted.shape} and {self.normalizer.shape}")
        total = float(self.normalizer.sum())
        if total <= 0:
            raise OPEInputError(f"normalizer sums to {total}: the evaluation policy gives no "
                                "weight to any logged action, so nothing can be estimated")
        per_sample = self.direct + self.weighted * (n / total)
        object.__setattr__(self, "per_sample", per_sample)
        object.__setattr__(self, "value", float(per_sample.mean()))

    @classmethod
    def mean_of(cls, terms: np.ndarray, hyperparameter: float | None = None) -> Estimate:
        """The estimate whose value is the mean of ``terms``."""
        return cls(terms, np.zeros_like(terms), np.ones_like(terms), hyperparameter)

    @property
    def std_error(self) -> float:
        """The per-sample terms' standard error, sqrt(var / n) (the delta method's for
        self-normalized estimators, whose per-sample terms are linearized around the value)."""
        n = self.per_sample.shape[0]
        if self.normalizer.any() and not np.all(self.normalizer == 1):
            scale = n / self.normalizer.sum()
            terms = self.direct + scale * (self.weighted - self.normalizer * (
                self.value - self.direct.mean()))
        else:
            terms = self.per_sample
        return float(terms.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")

"""Reward models from scikit-learn, cross-fitted so that no row's q-hat was fitted on itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bandits.ope.data import OPEInputError

#: Design values built at once when predicting every action at every position: bounds memory.
_CHUNK_VALUES = 16_000_000


@dataclass(frozen=True)
class TabularFeatures:
    """The design of a (row, action, position) triple: the row's ``user`` features (n, du), the
    action's ``item`` features (n_actions, di), the position one-hot, the row's ``pair``
    features for that action (n, n_actions, dp; e.g. OBD's user-item affinity), and, with
    ``cross=True``, the outer product of user and item features, so that a linear model can
    learn which users like which items."""

    user: np.ndarray
    item: np.ndarray
    action: np.ndarray
    position: np.ndarray
    n_positions: int
    pair: np.ndarray | None = None
    cross: bool = False

    def __post_init__(self) -> None:
        n = self.user.shape[0]
        if self.user.ndim != 2 or self.item.ndim != 2:
            raise OPEInputError(f"user {self.user.shape} and item {self.item.shape} must be "
                                "2-d feature matrices")
        if self.action.shape != (n,) or self.position.shape != (n,):
            raise OPEInputError(f"action {self.action.shape} and position "
                                f"{self.position.shape} must have one entry per user row ({n})")
        if self.n_positions < 1:
            raise OPEInputError(f"n_positions={self.n_positions} must be at least 1")
        if self.pair is not None and self.pair.shape[:2] != (n, self.item.shape[0]):
            raise OPEInputError(f"pair has shape {self.pair.shape}; it must be "
                                f"({n}, {self.item.shape[0]}, dp)")

    @property
    def n_actions(self) -> int:
        return int(self.item.shape[0])

    def design(self, rows: np.ndarray, actions: np.ndarray, positions: np.ndarray) -> np.ndarray:
        user, item = self.user[rows], self.item[actions]
        blocks = [user, item, np.eye(self.n_positions)[positions]]
        if self.pair is not None:
            blocks.append(self.pair[rows, actions])
        if self.cross:
            blocks.append((user[:, :, None] * item[:, None, :]).reshape(len(rows), -1))
        return np.concatenate(blocks, axis=1)

    def take(self, rows: np.ndarray) -> TabularFeatures:
        """The features of the rows ``rows`` (repeats allowed), e.g. a bootstrap resample."""
        return TabularFeatures(self.user[rows], self.item, self.action[rows], self.position[rows],
                               self.n_positions, None if self.pair is None else self.pair[rows],
                               self.cross)

    def logged(self, rows: np.ndarray) -> np.ndarray:
        return self.design(rows, self.action[rows], self.position[rows])

    def every_choice(self, rows: np.ndarray) -> np.ndarray:
        """The design of every action at every position of each row, row-major (row, a, p)."""
        a, p = self.n_actions, self.n_positions
        return self.design(np.repeat(rows, a * p), np.tile(np.repeat(np.arange(a), p), len(rows)),
                           np.tile(np.arange(p), len(rows) * a))


def _predict(model: Any, x: np.ndarray) -> np.ndarray:
    if hasattr(model, "predict_proba"):
        return model.predict_proba(x)[:, 1]
    return model.predict(x)


def cross_fit(model_factory: Callable[[], Any], features: TabularFeatures, reward: np.ndarray,
              folds: int = 3, seed: int = 0) -> np.ndarray:
    """q-hat (n, n_actions, n_positions) of every row, each predicted by a model
    (``model_factory()``, a scikit-learn classifier or regressor) fitted on the other ``folds``
    - 1 folds of the logged rows (cross-fitting: Chernozhukov et al., "Double/debiased machine
    learning", Econometrics Journal 2018), so DR's correction stays unbiased."""
    reward = np.asarray(reward, dtype=np.float64)
    n = reward.shape[0]
    if reward.shape != (features.user.shape[0],):
        raise OPEInputError(f"reward has shape {reward.shape}; features have "
                            f"{features.user.shape[0]} rows")
    if not 2 <= folds <= n:
        raise OPEInputError(f"folds={folds} must be between 2 and the {n} rows")
    fold = np.random.default_rng(seed).permutation(n) % folds
    a, p = features.n_actions, features.n_positions
    out = np.empty((n, a, p))
    width = features.logged(np.arange(1)).shape[1]
    per_chunk = max(1, _CHUNK_VALUES // (a * p * width))
    for k in range(folds):
        train, test = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        y = reward[train]
        if np.unique(y).size < 2:
            # A fold without a single click (common for rare clicks) has only one answer.
            out[test] = y[0] if y.size else 0.0
            continue
        model = model_factory()
        model.fit(features.logged(train), y)
        for start in range(0, test.size, per_chunk):
            rows = test[start:start + per_chunk]
            out[rows] = _predict(model, features.every_choice(rows)).reshape(len(rows), a, p)
    return out


def logistic_baseline() -> Any:
    """Open Bandit Pipeline's reward model in its OBD examples: logistic regression, weakly
    regularized, on the concatenated features."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=100.0, max_iter=2000)


def crossed_logistic() -> Any:
    """Logistic regression for :class:`TabularFeatures` with ``cross=True``: regularized more
    than the baseline, since the user x item block has many weights and clicks are rare."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, max_iter=2000)

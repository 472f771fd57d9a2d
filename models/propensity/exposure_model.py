"""Item exposure propensity from a classifier of exposure on user and item features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import expit, logit
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression

from models.propensity._base import EPS, Fitted, check


@dataclass(frozen=True)
class ExposureModel(Fitted):
    """P(user u was exposed to item i | features), learned from which pairs a log exposed.

    The model-based alternative to the popularity formula of Saito et al. (WSDM 2020,
    :class:`PopularityPropensity`), who define the propensity as ``theta_ui = P(O_ui = 1)``:
    a classifier (scikit-learn's ``LogisticRegression`` by default)::

        P(O_ui = 1 | x_ui) = sigma(w . x_ui + b),   x_ui = [user features of u,
                                                            item features of i,
                                                            log(1 + exposures of i)]

    (the last one with ``popularity=True``; with no features at all it is the only one,
    a smoothed popularity propensity on the absolute scale). The exposed class is every
    distinct (user, item) pair of the log; the unexposed class is ``negatives`` pairs per
    exposed one, drawn uniformly from the users x items grid, leaving out exposed ones.
    Drawing the unexposed at a rate ``s`` divides the odds by ``s``, so predictions add
    ``log s`` back to the logit: the prior correction of King and Zeng, "Logistic
    Regression in Rare Events Data", Political Analysis 2001.

    Learned: ``model_`` (the fitted clone), ``sampling_rate_`` (``s``), ``exposure_rate_``
    (exposed pairs / grid), ``item_exposures_`` (per item), ``n_users_``, ``n_items_``, and
    the feature matrices given to ``fit``, which ``predict`` looks users and items up in.
    """

    model: Any = None
    negatives: int = 4
    popularity: bool = True
    random_state: int = 0

    def __post_init__(self) -> None:
        check("model", self.model, self.model is None or (
            hasattr(self.model, "fit") and hasattr(self.model, "predict_proba")),
            "be None or a scikit-learn classifier (fit, predict_proba)")
        check("negatives", self.negatives,
              isinstance(self.negatives, int) and self.negatives >= 1, "be an integer >= 1")

    def fit(self, users: ArrayLike, items: ArrayLike, user_features: ArrayLike | None = None,
            item_features: ArrayLike | None = None) -> ExposureModel:
        """``users``, ``items``: the exposed pairs as row indices into ``user_features``
        (shape ``(n_users, d_u)``) and ``item_features`` (``(n_items, d_i)``); repeats
        count once. Without features, the grid is as large as the largest index seen."""
        users, items = _indices("users", users), _indices("items", items)
        check("len(items)", len(items), len(items) == len(users),
              f"be {len(users)}, one item per user index")
        if len(users) == 0:
            raise ValueError("users=[] must hold at least one exposed pair")
        user_x = _features("user_features", user_features, int(users.max()) + 1)
        item_x = _features("item_features", item_features, int(items.max()) + 1)
        n_users, n_items = len(user_x), len(item_x)
        check("popularity", self.popularity, self.popularity or user_x.shape[1]
              + item_x.shape[1] > 0, "be True when there are no user or item features")
        exposures = np.bincount(items, minlength=n_items)
        exposed = np.unique(users.astype(np.int64) * n_items + items)
        n_unexposed = n_users * n_items - len(exposed)
        rng = np.random.default_rng(self.random_state)
        draws = rng.integers(0, n_users * n_items, self.negatives * len(exposed))
        unexposed = draws[~np.isin(draws, exposed, assume_unique=False)]
        if n_unexposed and not len(unexposed):
            raise ValueError("no unexposed pair was drawn: raise negatives")
        self._learn(user_features_=user_x, item_features_=item_x, n_users_=n_users,
                    n_items_=n_items, item_exposures_=exposures,
                    exposure_rate_=len(exposed) / (n_users * n_items),
                    sampling_rate_=len(unexposed) / n_unexposed if n_unexposed else 1.0)
        pairs = np.concatenate([exposed, unexposed])
        x = self._pair_features(pairs // n_items, pairs % n_items)
        labels = np.concatenate([np.ones(len(exposed)), np.zeros(len(unexposed))])
        model = clone(self.model) if self.model is not None else LogisticRegression()
        self._learn(model_=model.fit(x, labels))
        return self

    def predict(self, users: ArrayLike, items: ArrayLike) -> np.ndarray:
        """P(O_ui = 1) for each (user, item) index pair."""
        self._check_fitted("model_")
        users, items = _indices("users", users), _indices("items", items)
        for name, index, n in (("users", users, self.n_users_), ("items", items, self.n_items_)):
            bad = index >= n
            check(name, index[bad][:1].tolist(), not bad.any(), f"be < {n} (rows fitted)")
        column = list(self.model_.classes_).index(1)
        sampled = self.model_.predict_proba(self._pair_features(users, items))[:, column]
        return expit(logit(np.clip(sampled, EPS, 1 - EPS)) + np.log(self.sampling_rate_))

    def _pair_features(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        parts = [self.user_features_[users], self.item_features_[items]]
        if self.popularity:
            parts.append(np.log1p(self.item_exposures_[items])[:, None])
        return np.concatenate(parts, axis=1)


def _indices(name: str, values: ArrayLike) -> np.ndarray:
    index = np.asarray(values)
    check(name, index.dtype, index.dtype.kind in "iu", "be integer row indices")
    check(name, index[index < 0][:1].tolist(), not (index < 0).any(), "be >= 0")
    return index.astype(np.int64).ravel()


def _features(name: str, values: ArrayLike | None, at_least: int) -> np.ndarray:
    if values is None:
        return np.zeros((at_least, 0))
    x = np.asarray(values, dtype=np.float64)
    check(f"{name}.shape", x.shape, x.ndim == 2 and len(x) >= at_least,
          f"be (n, d) with a row for every index given (n >= {at_least})")
    return x

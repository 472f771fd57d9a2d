"""The Open Bandit Dataset (Saito et al., "Open Bandit Dataset and Pipeline", NeurIPS 2021
Datasets track) as off-policy evaluation data: the behaviour log, its item features and an
evaluation policy given as item x position probabilities."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from bandits.ope.data import OPEData, OPEInputError
from bandits.ope.reward_model import TabularFeatures, cross_fit

_USER, _AFFINITY = "user_feature_", "user-item_affinity_"


@dataclass(frozen=True)
class ObdLog:
    """A behaviour log and the features of its rows: ``user`` one-hot of the hashed user
    features (n, du), ``affinity`` of each row's user to each item (n, n_items), ``item``
    features (n_items, di: the numeric one and one-hot of the hashed ones)."""

    data: OPEData
    user: np.ndarray
    affinity: np.ndarray
    item: np.ndarray

    def features(self, cross: bool = False, items: bool = True) -> TabularFeatures:
        """The reward model's design; ``items=False`` describes items by their features only,
        otherwise by a one-hot of the item too."""
        item = np.hstack([self.item, np.eye(self.item.shape[0])]) if items else self.item
        return TabularFeatures(self.user, item, self.data.action, self.data.position,
                               self.data.n_positions, pair=self.affinity[:, :, None],
                               cross=cross)


    def refit(self, model_factory: Callable[[], Any], cross: bool = False, folds: int = 3
              ) -> Callable[[np.ndarray, int], np.ndarray]:
        """A reward refit for :func:`bandits.ope.evaluate`: q-hat of the rows it is given,
        cross-fitted with ``folds`` folds on those rows alone."""
        features = self.features(cross=cross)
        reward = self.data.reward

        def fit(rows: np.ndarray, seed: int) -> np.ndarray:
            return cross_fit(model_factory, features.take(rows), reward[rows], folds, seed)

        return fit


def _one_hot(frame: pl.DataFrame) -> np.ndarray:
    blocks = [frame[c].to_numpy()[:, None] == np.unique(frame[c].to_numpy())[None, :]
              for c in frame.columns]
    return np.hstack(blocks).astype(np.float64) if blocks else np.zeros((frame.height, 0))


def read_item_context(path: str | os.PathLike[str]) -> np.ndarray:
    """OBD's ``item_context.csv``: (n_items, di) features of items 0..n_items-1, in item order."""
    from ingest.adapters import reading

    with reading(path, "CSV file"):
        frame = pl.read_csv(path, infer_schema_length=None)
    if "item_id" not in frame.columns:
        raise OPEInputError(f"{path}: no item_id column; columns are {frame.columns}")
    frame = frame.sort("item_id").drop(c for c in frame.columns if c in ("", "column_1"))
    ids = frame["item_id"].to_numpy()
    if not np.array_equal(ids, np.arange(len(ids))):
        raise OPEInputError(f"{path}: item_id must be 0..{len(ids) - 1}, each once")
    features = frame.drop("item_id")
    numeric = features.select(c for c in features.columns if features[c].dtype.is_numeric())
    text = features.select(c for c in features.columns if not features[c].dtype.is_numeric())
    return np.hstack([numeric.to_numpy().astype(np.float64), _one_hot(text)])


def read_policy_dist(path: str | os.PathLike[str]) -> np.ndarray:
    """An evaluation policy as a CSV of n_items rows by n_positions columns (position 1 first),
    lines starting with ``#`` skipped, each column summing to 1 (``bts_action_dist.csv``)."""
    try:
        dist = np.loadtxt(path, delimiter=",", comments="#", ndmin=2)
    except ValueError as exc:
        raise OPEInputError(f"{path}: not a CSV of probabilities ({exc})") from None
    if (dist < 0).any() or not np.allclose(dist.sum(axis=0), 1.0, atol=1e-4):
        raise OPEInputError(f"{path}: every column (position) must hold probabilities that sum "
                            f"to 1; they sum to {np.round(dist.sum(axis=0), 6).tolist()}")
    return dist / dist.sum(axis=0, keepdims=True)


def read_obd_log(path: str | os.PathLike[str], item_context: np.ndarray,
                 policy_dist: np.ndarray) -> ObdLog:
    """The OBD log at ``path`` (rows whose values do not parse are left out) with the
    evaluation policy ``policy_dist`` (n_items, n_positions), the same for every row."""
    from ingest.adapters.obd import read_obd

    frame = read_obd(path)
    if frame.height == 0:
        raise OPEInputError(f"{path}: no row of the log could be read")
    n_items, n_positions = policy_dist.shape
    if item_context.shape[0] != n_items:
        raise OPEInputError(f"--item-context has {item_context.shape[0]} items; the policy "
                            f"distribution has {n_items} rows")
    try:
        action = frame["item_id"].cast(pl.Int64).to_numpy()
    except pl.exceptions.InvalidOperationError:
        raise OPEInputError(f"{path}: item_id must be integers 0..{n_items - 1}") from None
    position = frame["position"].to_numpy().astype(np.int64) - 1
    for name, values, top in (("item_id", action, n_items), ("position", position,
                                                              n_positions)):
        if (outside := (values < 0) | (values >= top)).any():
            bad = values[outside][0] + (name == "position")
            raise OPEInputError(f"{path}: {name}={bad} is outside the evaluation policy's "
                                f"{n_items} items x {n_positions} positions")
    n = frame.height
    dist = np.broadcast_to(policy_dist[None], (n, n_items, n_positions))
    data = OPEData(frame["click"].cast(pl.Float64).to_numpy(), action, position,
                   frame["propensity_score"].to_numpy(), dist)
    users = frame.select(c for c in frame.columns if c.startswith(_USER))
    affinity = frame.select(f"{_AFFINITY}{i}" for i in range(n_items)
                            if f"{_AFFINITY}{i}" in frame.columns).to_numpy()
    if affinity.shape[1] != n_items:
        affinity = np.zeros((n, n_items))
    return ObdLog(data, _one_hot(users), affinity.astype(np.float64), item_context)


def on_policy_value(path: str | os.PathLike[str]) -> float:
    """The mean click of an on-policy log (``--truth-log``): the ground truth an estimate of
    that policy's value is judged by."""
    from ingest.adapters.obd import read_obd

    frame = read_obd(path)
    if frame.height == 0:
        raise OPEInputError(f"{path}: no row of the truth log could be read")
    return float(frame["click"].cast(pl.Float64).mean())

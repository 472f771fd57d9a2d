"""Learned retrievers as the pipeline's encoders (:class:`ranking.pipeline.Encoder`).

- :class:`UserTowerEncoder`: a two-tower model's user tower, by user id; its item tower's
  vectors fill the index under the same ``name``;
- :class:`RocchioEncoder`: a text encoder whose query vectors Counterfactual Rocchio moves
  toward what was clicked for them (same ``name`` as the text encoder: the items stay where
  they are, only the queries move).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.retrievers.rocchio import CounterfactualRocchio
from models.retrievers.two_tower import TwoTower
from ranking.pipeline import Encoder


class UserTowerEncoder:
    """User ids to the tower's unit vectors; an id the model never saw is a ``KeyError``."""

    def __init__(self, model: TwoTower, user_ids: Sequence[str], name: str) -> None:
        if len(user_ids) != model.hparams["n_users"]:
            raise ValueError(f"user_ids has {len(user_ids)} entries; the model has "
                             f"{model.hparams['n_users']} users")
        self.model, self.name, self.dim = model, name, int(model.hparams["dim"])
        self.rows_ = {u: i for i, u in enumerate(user_ids)}

    def encode(self, keys: Sequence[str]) -> np.ndarray:
        rows = []
        for key in keys:
            if key not in self.rows_:
                raise KeyError(key)
            rows.append(self.rows_[key])
        return self.model.user_vectors(np.asarray(rows, dtype=np.int64))


class RocchioEncoder:
    """``rocchio.transform`` of ``base``'s query vectors."""

    def __init__(self, base: Encoder, rocchio: CounterfactualRocchio) -> None:
        self.base, self.rocchio = base, rocchio
        self.name, self.dim = base.name, base.dim

    def encode(self, keys: Sequence[str]) -> np.ndarray:
        return self.rocchio.transform(list(keys), self.base.encode(keys))

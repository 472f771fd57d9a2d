"""Pre-batched click lists for unbiased learning to rank: one row per shown list (a request's
slate, or a query's result page), padded to a common length.

A batch is a dict of tensors over ``B`` lists of ``L`` slots:

- ``features`` (B, L, F) float: one feature vector per (context, item) slot; what it holds
  is the caller's choice (e.g. the user's and the item's vectors and their product);
- ``labels`` (B, L) float: clicks (0/1), or any non-negative relevance for a ranker trained
  on the truth;
- ``mask`` (B, L) bool: real slots, padding after the last one;
- ``positions`` (B, L) long: the 1-based position the slot was shown at (0 on padding);
- ``propensities`` (B, L) float: the examination probability of the slot's position, from a
  given curve (1 when none is given, and on padding).

The propensity here is *examination* (how likely a user looked at position k), not the
logged policy propensity of the impression (how likely the policy put that item there):
for a deterministic ranker the latter is 1 at every slot, whatever the position bias.

Why not ``DataLoader(TensorDataset(...), batch_size=B)``: that indexes one list at a time and
collates B small tensors per batch (DESIGN.md, Learners). As in :mod:`models.data`, a sampler
yields one index tensor per batch, reshuffled every epoch with a seed, and the dataset
gathers the whole batch at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import polars as pl
import torch
from numpy.typing import ArrayLike
from torch.utils.data import Dataset

from models.data import PreBatchedDataModule

Batch = dict[str, torch.Tensor]

#: The tensors of a batch, in the order of the module doc.
FIELDS = ("features", "labels", "mask", "positions", "propensities")


def propensities_from_curve(curve: ArrayLike, positions: ArrayLike) -> np.ndarray:
    """The examination of each slot: ``curve[position - 1]`` where ``position`` >= 1, and 1
    on padding (position 0). ``curve`` is indexed by position - 1, e.g.
    ``simulation.clicks.examination(k)`` or a fitted
    :class:`models.propensity.RegressionEM`'s ``examination_``; it may be relative to
    position 1, since a common factor only scales the loss."""
    curve_a = np.asarray(curve, dtype=np.float64)
    where = np.asarray(positions, dtype=np.int64)
    if curve_a.ndim != 1 or len(curve_a) == 0:
        raise ValueError(f"curve has shape {curve_a.shape}: it must be 1-D, one value per "
                         "position")
    if ((curve_a <= 0) | ~np.isfinite(curve_a)).any():
        raise ValueError(f"curve must be positive and finite at every position; got "
                         f"{curve_a.tolist()}")
    if where.size and (where.min() < 0 or where.max() > len(curve_a)):
        raise ValueError(f"positions must be in [1, {len(curve_a)}] (the curve's length), "
                         f"or 0 on padding; got [{where.min()}, {where.max()}]")
    return np.where(where > 0, curve_a[np.clip(where - 1, 0, None)], 1.0)


class ListBatches(Dataset[Batch]):
    """Lists as tensors (see the module doc), indexed by a whole batch at once."""

    def __init__(self, tensors: Batch) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors["labels"])

    def __getitem__(self, key: tuple[int, int, torch.Tensor]) -> Batch:  # type: ignore[override]
        _, _, rows = key
        return {name: tensor[rows] for name, tensor in self.tensors.items()}


class ListDataModule(PreBatchedDataModule):
    """Click lists as pre-batched tensors for training and validation.

    ``features`` (N, L, F) and ``labels`` (N, L) as in the module doc. ``mask`` (N, L)
    defaults to every slot real; padding must come after a list's real slots, and every
    list needs one. ``positions`` (N, L) default to 1..L. Examination propensities come
    either per slot (``propensities``, in (0, 1]) or from a curve (``examination``,
    indexed by position - 1); without either they are 1, and every weighted loss is its
    naive version. ``val_fraction`` of the lists, chosen with ``seed``, are held out for
    validation (early stopping). ``batch_size`` counts lists. ``data_range`` describes the
    training data for an artifact's metadata.
    """

    def __init__(
        self,
        features: ArrayLike | torch.Tensor,
        labels: ArrayLike | torch.Tensor,
        *,
        mask: ArrayLike | torch.Tensor | None = None,
        positions: ArrayLike | torch.Tensor | None = None,
        propensities: ArrayLike | torch.Tensor | None = None,
        examination: ArrayLike | None = None,
        batch_size: int = 256,
        val_fraction: float = 0.1,
        seed: int = 0,
        list_ids: Sequence[str] | None = None,
        data_range: dict[str, float | str] | None = None,
    ) -> None:
        super().__init__()
        x = torch.tensor(np.asarray(features), dtype=torch.float32)
        y = torch.tensor(np.asarray(labels), dtype=torch.float32)
        if x.ndim != 3 or y.shape != x.shape[:2]:
            raise ValueError(f"features must be (N, L, F) and labels (N, L); got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
        n, length = y.shape
        if n == 0 or length == 0:
            raise ValueError("no lists to train on")
        real = (torch.ones(n, length, dtype=torch.bool) if mask is None
                else torch.tensor(np.asarray(mask), dtype=torch.bool))
        where = (torch.arange(1, length + 1).expand(n, length) if positions is None
                 else torch.tensor(np.asarray(positions), dtype=torch.long))
        for name, value in (("mask", real), ("positions", where)):
            if value.shape != y.shape:
                raise ValueError(f"{name} has shape {tuple(value.shape)}; labels have "
                                 f"{tuple(y.shape)}")
        if not real[:, 0].all() or (real[:, 1:] & ~real[:, :-1]).any():
            raise ValueError("mask: every list needs a real first slot, and padding must "
                             "come after the real slots")
        if ((y < 0) | ~torch.isfinite(y)).any():
            raise ValueError("labels must be finite and >= 0")
        if (where[real] < 1).any():
            raise ValueError("positions of real slots must be >= 1")
        where = where.masked_fill(~real, 0)
        if propensities is not None and examination is not None:
            raise ValueError("give propensities or an examination curve, not both")
        if examination is not None:
            theta = torch.tensor(propensities_from_curve(examination, where.numpy()),
                                 dtype=torch.float32)
        elif propensities is not None:
            theta = torch.tensor(np.asarray(propensities), dtype=torch.float32)
            if theta.shape != y.shape:
                raise ValueError(f"propensities has shape {tuple(theta.shape)}; labels have "
                                 f"{tuple(y.shape)}")
            bad = real & ((theta <= 0) | (theta > 1) | theta.isnan())
            if bad.any():
                raise ValueError("propensities of real slots must be in (0, 1]")
        else:
            theta = torch.ones(n, length)
        if batch_size < 1 or not 0 <= val_fraction < 1:
            raise ValueError(f"batch_size={batch_size}, val_fraction={val_fraction}: need "
                             "batch_size >= 1 and 0 <= val_fraction < 1")
        if int(round(n * val_fraction)) >= n:
            raise ValueError(f"val_fraction={val_fraction} of {n} lists leaves none to train on")
        if list_ids is not None and len(list_ids) != n:
            raise ValueError(f"list_ids has {len(list_ids)} entries for {n} lists")
        # Padding carries no features or labels, so a loss that forgets the mask somewhere
        # is off by zeros rather than by whatever the caller left there.
        keep = real.unsqueeze(-1)
        self._tensors: Batch = {"features": x * keep, "labels": y * real, "mask": real,
                                "positions": where, "propensities": theta.masked_fill(~real, 1)}
        self.batch_size, self.val_fraction, self.seed = batch_size, val_fraction, seed
        self.list_ids = list(list_ids) if list_ids is not None else None
        self.data_range = data_range
        self.train: ListBatches | None = None
        self.val: ListBatches | None = None

    @property
    def n_lists(self) -> int:
        return len(self._tensors["labels"])

    @property
    def n_features(self) -> int:
        return int(self._tensors["features"].shape[-1])

    @property
    def n_positions(self) -> int:
        """The deepest position shown."""
        return int(self._tensors["positions"].max())

    def tensors(self) -> Batch:
        """Every list, as one batch."""
        return dict(self._tensors)

    @classmethod
    def from_join(cls, rows: pl.DataFrame | pl.LazyFrame,
                  features: Callable[[pl.DataFrame], ArrayLike], *, labels: str = "clicked",
                  n_positions: int | None = None, **options: Any) -> ListDataModule:
        """From the impression-click join (:mod:`ingest.joins`): one list per
        ``request_id``, its slots in position order.

        ``features`` is called once with the join's slot rows in list order (every column
        of ``rows``) and returns their feature vectors, shape (rows, F): it is where the
        caller looks up what it knows about each (context, item) pair. ``labels`` names the
        target column (``clicked`` by default; a column of true relevance for an oracle).
        Slots shown deeper than ``n_positions`` are left out. Other ``options`` go to the
        constructor (``examination=curve`` to weight by a position curve)."""
        frame = rows.lazy().collect() if isinstance(rows, pl.LazyFrame) else rows
        missing = [c for c in ("request_id", "position", labels) if c not in frame.columns]
        if missing:
            raise ValueError(f"rows have no column {missing[0]!r} (they have "
                             f"{sorted(frame.columns)})")
        if n_positions is not None:
            frame = frame.filter(pl.col("position") <= n_positions)
        if frame.height == 0:
            raise ValueError("the join has no rows to train on")
        frame = frame.sort("request_id", "position")
        request = frame["request_id"]
        code = frame.select(pl.col("request_id").rank("dense").cast(pl.Int64) - 1) \
            .to_series().to_numpy()
        slot = frame.select(pl.int_range(pl.len()).over("request_id")).to_series().to_numpy()
        n, length = int(code.max()) + 1, int(slot.max()) + 1
        values = np.asarray(features(frame), dtype=np.float32)
        if values.ndim != 2 or len(values) != frame.height:
            raise ValueError(f"features returned shape {values.shape}; expected "
                             f"({frame.height}, F), one row per slot")
        x = np.zeros((n, length, values.shape[1]), dtype=np.float32)
        y = np.zeros((n, length), dtype=np.float32)
        real = np.zeros((n, length), dtype=bool)
        where = np.zeros((n, length), dtype=np.int64)
        x[code, slot] = values
        y[code, slot] = frame[labels].cast(pl.Float32).to_numpy()
        real[code, slot] = True
        where[code, slot] = frame["position"].to_numpy()
        ids = request.unique(maintain_order=True).to_list()
        if "ts" in frame.columns:
            options.setdefault("data_range", {"first_ts": frame["ts"].min(),
                                              "last_ts": frame["ts"].max()})
        return cls(x, y, mask=real, positions=where, list_ids=ids, **options)

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        n = self.n_lists
        n_val = int(round(n * self.val_fraction))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        parts = {"train": order[n_val:], "val": order[:n_val]}
        self.train = ListBatches({k: v[parts["train"]] for k, v in self._tensors.items()})
        self.val = (ListBatches({k: v[parts["val"]] for k, v in self._tensors.items()})
                    if n_val else None)

"""Pre-batched training data for the recommenders: (user, item) index pairs with labels and
exposure propensities, cut into batches of tensors, reshuffled every epoch with a seed.

Why not ``DataLoader(TensorDataset(...), batch_size=B)``: that indexes one sample at a time
and collates B small tensors per batch, far slower on CPU than gathering a batch with one
index tensor (DESIGN.md, Learners). Here the sampler yields one index tensor per batch and
the dataset gathers the whole batch at once; the ``DataLoader`` only passes it on
(``batch_size=None``), and Lightning moves it to the model's device.

Batches are dicts of tensors. With ``mode="pointwise"`` (MF, Rel-MF):
``users``, ``items``, ``labels`` (float), ``propensities`` (float), ``weights`` (float), of
shape ``(batch_size * (1 + negatives),)``: the batch's rows followed by ``negatives`` sampled
items per row with label 0 and propensity 1. With ``mode="pairwise"`` (BPR): ``users``, ``items``
(the positives), ``propensities`` of shape ``(batch_size,)`` and ``negatives`` of shape
``(batch_size, negatives)``. Only rows with a positive label go into pairwise batches.

Negatives are drawn uniformly among the items that are not one of the user's known
positives, per batch and per epoch, from a generator seeded by (seed, epoch, batch), so a run
is reproducible and independent of worker processes. Validation batches keep the same
negatives every epoch, so the monitored loss moves only when the model does.

Pointwise batches also carry ``weights``. With ``negative_weighting="matrix"`` (the default)
each sampled negative stands for its share of the user's unlabeled pairs, so a batch's
weighted loss estimates the loss over the whole user x item matrix, which is what the
pointwise estimators are defined on. Rel-MF needs it: its positives carry a negative term of
weight 1 - 1/theta, which only the full mass of the unlabeled pairs balances; with a few
unweighted negatives per positive, rarely exposed clicked items would come out on top.
``"sample"`` counts every negative once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import polars as pl
import pytorch_lightning as lightning
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

Mode = Literal["pointwise", "pairwise"]
Weighting = Literal["matrix", "sample"]
Batch = dict[str, torch.Tensor]


def _generator(*seeds: int) -> torch.Generator:
    # One stream per (seed, epoch, batch): mixing through NumPy's SeedSequence keeps nearby
    # tuples from giving correlated streams.
    state = np.random.SeedSequence([s & 0xFFFFFFFF for s in seeds]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class EpochBatches(Sampler[tuple[int, int, torch.Tensor]]):
    """Yields ``(epoch, batch number, row indices)``, one per batch: a fresh seeded
    permutation each epoch when ``shuffle``. Lightning calls :meth:`set_epoch` before each
    epoch; iterated by hand, each pass counts as the next epoch.

    Under data parallelism (``num_replicas`` processes, this one ``rank``) every process
    draws the same permutation, cuts it into the same batches and takes every
    ``num_replicas``-th of them, starting at its ``rank``: the shares are disjoint and
    together hold each row once per epoch. Each process must take the same number of
    batches, since every training step waits for all of them (the gradients are averaged),
    so the rows of the last, incomplete round of batches are cut into ``num_replicas``
    near-equal batches instead (with fewer rows than processes, into the round before,
    whose batches then hold a row more than ``batch_size``). Nothing is dropped or
    repeated, and one process gets exactly the batches it always did. Batch numbers are
    the epoch's, not the process's: a batch's negatives do not depend on who draws it.
    """

    def __init__(self, n_rows: int, batch_size: int, seed: int, shuffle: bool,
                 num_replicas: int = 1, rank: int = 0) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"num_replicas={num_replicas}, rank={rank}: need "
                             "num_replicas >= 1 and 0 <= rank < num_replicas")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        if n_rows < num_replicas:
            raise ValueError(f"n_rows={n_rows} < num_replicas={num_replicas}: every "
                             "process needs at least one row")
        self.n_rows, self.batch_size, self.seed, self.shuffle = n_rows, batch_size, seed, shuffle
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rounds(self) -> int:
        """Batches per process: rounds of ``num_replicas`` batches."""
        rounds = math.ceil(math.ceil(self.n_rows / self.batch_size) / self.num_replicas)
        if rounds > 1 and self._tail_start(rounds) > self.n_rows - self.num_replicas:
            rounds -= 1  # the last round would leave some process without a row
        return rounds

    def _tail_start(self, rounds: int) -> int:
        return (rounds - 1) * self.num_replicas * self.batch_size

    def __len__(self) -> int:
        return self._rounds()

    def __iter__(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        epoch = self.epoch if self.shuffle else 0
        order = (torch.randperm(self.n_rows, generator=_generator(self.seed, 1, epoch))
                 if self.shuffle else torch.arange(self.n_rows))
        tail = self._tail_start(self._rounds())
        # (An empty tensor splits into one empty piece, hence the guard.)
        batches = [*(order[:tail].split(self.batch_size) if tail else ()),
                   *order[tail:].tensor_split(self.num_replicas)]
        for number in range(self.rank, len(batches), self.num_replicas):
            yield epoch, number, batches[number]
        if self.shuffle:
            self.epoch = epoch + 1


class NegativeSampler:
    """Uniform draws among the items that are not a user's known positives: exact and
    vectorized, with no redrawing however many positives a user has. The r-th non-positive
    item of a user is r plus the number of the user's positives p_j with p_j - j <= r
    (j = 0, 1, ... in sorted order); one ``searchsorted`` over keys
    ``user * n_items + p_j - j`` counts them for a whole batch. A user whose every item is a
    positive gets uniform draws over the catalog."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor, n_users: int,
                 n_items: int) -> None:
        keys = torch.unique(users * n_items + items)  # sorted
        counts = torch.bincount(keys // n_items, minlength=n_users)
        self.start = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(keys)) - self.start[keys // n_items]
        self.gap_keys = keys - rank
        self.free = n_items - counts
        self.n_items = n_items

    def __call__(self, users: torch.Tensor, count: int, generator: torch.Generator
                 ) -> torch.Tensor:
        """``count`` items per user, shape (len(users), count)."""
        free = self.free[users]
        uniform = torch.rand((len(users), count), generator=generator, dtype=torch.float64)
        nth = (uniform * free[:, None]).long()
        below = torch.searchsorted(self.gap_keys, users[:, None] * self.n_items + nth,
                                   right=True) - self.start[users][:, None]
        drawn = nth + below
        full = free == 0
        if full.any():
            drawn[full] = torch.randint(0, self.n_items, (int(full.sum()), count),
                                        generator=generator)
        return drawn


class InteractionBatches(Dataset[Batch]):
    """Rows of (user, item, label, propensity), indexed by a whole batch at once; see the
    module doc for what a batch holds."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor, labels: torch.Tensor,
                 propensities: torch.Tensor, negative_weights: torch.Tensor, mode: Mode,
                 negatives: int, seed: int, sampler: NegativeSampler) -> None:
        self.users, self.items, self.labels, self.propensities = users, items, labels, \
            propensities
        #: Per row: the weight of each negative drawn for it.
        self.negative_weights = negative_weights
        self.mode, self.negatives, self.seed, self.sampler = mode, negatives, seed, sampler

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, key: tuple[int, int, torch.Tensor]) -> Batch:  # type: ignore[override]
        epoch, number, rows = key
        users, items = self.users[rows], self.items[rows]
        propensities = self.propensities[rows]
        generator = _generator(self.seed, 2, epoch, number)
        if self.mode == "pairwise":
            return {"users": users, "items": items, "propensities": propensities,
                    "negatives": self.sampler(users, self.negatives, generator)}
        labels = self.labels[rows]
        weights = torch.ones(len(rows))
        if not self.negatives:
            return {"users": users, "items": items, "labels": labels,
                    "propensities": propensities, "weights": weights}
        negative_items = self.sampler(users, self.negatives, generator).ravel()
        n_negative = len(negative_items)
        return {"users": torch.cat([users, users.repeat_interleave(self.negatives)]),
                "items": torch.cat([items, negative_items]),
                "labels": torch.cat([labels, labels.new_zeros(n_negative)]),
                "propensities": torch.cat([propensities, propensities.new_ones(n_negative)]),
                "weights": torch.cat([weights, self.negative_weights[rows]
                                      .repeat_interleave(self.negatives)])}


class PreBatchedDataModule(lightning.LightningDataModule):
    """Loaders over datasets that return a whole batch for each index tensor of
    :class:`EpochBatches`: ``setup`` sets ``train`` (and ``val``, or None without a
    validation split); ``batch_size`` and ``seed`` set the batches."""

    batch_size: int
    seed: int
    train: Dataset[Batch] | None
    val: Dataset[Batch] | None

    def _replicas(self) -> tuple[int, int]:
        """(processes, this one's rank) of data-parallel training: from the trainer, which
        knows them once its strategy is set up (they are asked for when the loaders are
        made, after that), else from an initialized ``torch.distributed``."""
        trainer = self.trainer
        shares = trainer.distributed_sampler_kwargs if trainer is not None else None
        if shares is not None:
            return int(shares["num_replicas"]), int(shares["rank"])
        if trainer is None and dist.is_available() and dist.is_initialized():
            return dist.get_world_size(), dist.get_rank()
        return 1, 0

    def _loader(self, part: Dataset[Batch], shuffle: bool) -> DataLoader[Batch]:
        # Each process takes its own share of the batches (EpochBatches): train() turns off
        # Lightning's sampler replacement, which would wrap these batches in a
        # DistributedSampler that pads the shares by repeating batches and reshuffles them.
        num_replicas, rank = self._replicas()
        sampler = EpochBatches(len(part), self.batch_size, self.seed, shuffle,  # type: ignore[arg-type]
                               num_replicas=num_replicas, rank=rank)
        return DataLoader(part, sampler=sampler, batch_size=None)

    def train_dataloader(self) -> DataLoader[Batch]:
        self.setup("fit")
        assert self.train is not None
        return self._loader(self.train, shuffle=True)

    def val_dataloader(self) -> DataLoader[Batch] | list[DataLoader[Batch]]:
        self.setup("fit")
        return [] if self.val is None else self._loader(self.val, shuffle=False)


class InteractionDataModule(PreBatchedDataModule):
    """(user, item) interactions as pre-batched tensors for training and validation.

    ``users`` and ``items`` are contiguous indices (``user_ids[u]`` and ``item_ids[i]`` are
    the original ids when known); ``labels`` default to 1 (every row a positive: implicit
    feedback), ``propensities`` to 1 (no exposure correction). ``val_fraction`` of the rows,
    chosen with ``seed``, are held out for validation. ``batch_size`` counts rows before
    negatives are added. ``data_range`` describes the training data (e.g. first and last
    event time) for the artifact's metadata.
    """

    def __init__(
        self,
        users: Sequence[int] | np.ndarray | torch.Tensor,
        items: Sequence[int] | np.ndarray | torch.Tensor,
        *,
        labels: Sequence[float] | np.ndarray | torch.Tensor | None = None,
        propensities: Sequence[float] | np.ndarray | torch.Tensor | None = None,
        n_users: int | None = None,
        n_items: int | None = None,
        mode: Mode = "pointwise",
        negatives: int = 1,
        negative_weighting: Weighting = "matrix",
        batch_size: int = 1024,
        val_fraction: float = 0.1,
        seed: int = 0,
        user_ids: Sequence[str] | None = None,
        item_ids: Sequence[str] | None = None,
        data_range: dict[str, float | str] | None = None,
    ) -> None:
        super().__init__()
        # Copies: the module keeps these, whatever the caller does to its arrays later.
        users_t = torch.tensor(np.asarray(users), dtype=torch.long)
        items_t = torch.tensor(np.asarray(items), dtype=torch.long)
        n = len(users_t)
        labels_t = (torch.ones(n) if labels is None
                    else torch.tensor(np.asarray(labels), dtype=torch.float32))
        prop_t = (torch.ones(n) if propensities is None
                  else torch.tensor(np.asarray(propensities), dtype=torch.float32))
        if not (users_t.ndim == items_t.ndim == labels_t.ndim == prop_t.ndim == 1
                and len(items_t) == len(labels_t) == len(prop_t) == n):
            raise ValueError(f"users, items, labels and propensities must be 1-D of one length; "
                             f"got {len(users_t)}, {len(items_t)}, {len(labels_t)}, "
                             f"{len(prop_t)}")
        if n == 0:
            raise ValueError("no interactions to train on")
        if mode not in ("pointwise", "pairwise"):
            raise ValueError(f"mode={mode!r} must be 'pointwise' or 'pairwise'")
        if negative_weighting not in ("matrix", "sample"):
            raise ValueError(f"negative_weighting={negative_weighting!r} must be 'matrix' or "
                             "'sample'")
        if mode == "pairwise" and negatives < 1:
            raise ValueError(f"negatives={negatives}: pairwise batches need at least one")
        if negatives < 0 or batch_size < 1 or not 0 <= val_fraction < 1:
            raise ValueError(f"negatives={negatives}, batch_size={batch_size}, "
                             f"val_fraction={val_fraction}: need negatives >= 0, "
                             "batch_size >= 1, 0 <= val_fraction < 1")
        self.n_users = int(n_users if n_users is not None
                           else len(user_ids) if user_ids is not None else users_t.max() + 1)
        self.n_items = int(n_items if n_items is not None
                           else len(item_ids) if item_ids is not None else items_t.max() + 1)
        for name, ids, size in (("user_ids", user_ids, self.n_users),
                                ("item_ids", item_ids, self.n_items)):
            if ids is not None and len(ids) != size:
                raise ValueError(f"{name} has {len(ids)} entries for {size} indices")
        for name, values, bound in (("users", users_t, self.n_users),
                                    ("items", items_t, self.n_items)):
            if values.min() < 0 or values.max() >= bound:
                raise ValueError(f"{name} must be indices in [0, {bound}); "
                                 f"got [{int(values.min())}, {int(values.max())}]")
        if ((prop_t <= 0) | (prop_t > 1) | prop_t.isnan()).any():
            raise ValueError("propensities must be in (0, 1]")
        self.mode, self.negatives, self.batch_size = mode, negatives, batch_size
        self.negative_weighting = negative_weighting
        self.val_fraction, self.seed = val_fraction, seed
        self.user_ids = list(user_ids) if user_ids is not None else None
        self.item_ids = list(item_ids) if item_ids is not None else None
        self.data_range = data_range
        self._rows = (users_t, items_t, labels_t, prop_t)
        self.train: InteractionBatches | None = None
        self.val: InteractionBatches | None = None

    @property
    def n_interactions(self) -> int:
        """Rows given, training and validation together (before negatives)."""
        return len(self._rows[0])

    @classmethod
    def from_join(cls, rows: pl.DataFrame | pl.LazyFrame, *, propensity: str | None = None,
                  unclicked: bool = False, user_ids: Sequence[str] | None = None,
                  item_ids: Sequence[str] | None = None,
                  **options: Any) -> InteractionDataModule:
        """From the impression-click join (:mod:`ingest.joins`): one row per (user, item)
        pair, label 1 if any of its slots was clicked.

        ``propensity`` names a column holding the pair's exposure propensity, the chance
        that the user saw the item at all (e.g. an item-level estimate joined onto the
        rows); the pair takes its mean over the pair's slots. It is not the logged slot
        propensity, which is conditional on the item having been among the candidates and
        so says nothing about the items that never were. Without it every propensity is 1.

        Only clicked pairs are kept unless ``unclicked``: in these implicit-feedback losses a
        shown-but-ignored pair is a 0 like any unshown one, and those reach training through
        negative sampling. Ids become contiguous indices: ``user_ids`` and ``item_ids`` fix
        the index (e.g. the whole catalog, so that items never shown can be sampled as
        negatives and scored); by default every id of the join, sorted. Other ``options``
        go to the constructor.
        """
        frame = rows.lazy().select(
            "user_id", "item_id", "ts", "clicked",
            exposure=pl.lit(1.0, pl.Float64) if propensity is None
            else pl.col(propensity).cast(pl.Float64)).collect()
        if frame.height == 0:
            raise ValueError("the join has no rows to train on")
        indices = {}
        for column, given in (("user_id", user_ids), ("item_id", item_ids)):
            ids = (frame[column].unique().sort() if given is None
                   else pl.Series(column, list(given), dtype=pl.String))
            if given is not None:
                unknown = frame.select(column).unique().join(ids.to_frame(), on=column,
                                                             how="anti")[column].sort()
                if len(unknown):
                    raise ValueError(f"{len(unknown)} {column}s of the join are not in the "
                                     f"given {column}s, e.g. {unknown.head(3).to_list()}")
            indices[column] = ids
        pairs = (frame.group_by("user_id", "item_id")
                 .agg(label=pl.col("clicked").any(), propensity=pl.col("exposure").mean()))
        if not unclicked:
            pairs = pairs.filter(pl.col("label"))
        pairs = (pairs
                 .join(indices["user_id"].to_frame().with_row_index("user"), on="user_id")
                 .join(indices["item_id"].to_frame().with_row_index("item"), on="item_id")
                 .sort("user", "item"))
        options.setdefault("data_range", {"first_ts": frame["ts"].min(),
                                          "last_ts": frame["ts"].max()})
        return cls(pairs["user"].to_numpy(), pairs["item"].to_numpy(),
                   labels=pairs["label"].cast(pl.Float32).to_numpy(),
                   propensities=pairs["propensity"].to_numpy(),
                   user_ids=indices["user_id"].to_list(), item_ids=indices["item_id"].to_list(),
                   **options)

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        users, items, labels, propensities = self._rows
        if self.mode == "pairwise":
            keep = labels > 0
            if not keep.any():
                raise ValueError("pairwise batches need rows with a positive label")
            users, items, labels, propensities = (users[keep], items[keep], labels[keep],
                                                  propensities[keep])
        n = len(users)
        n_val = int(round(n * self.val_fraction))
        order = torch.randperm(n, generator=_generator(self.seed, 0))
        val_rows, train_rows = order[:n_val], order[n_val:]
        positive = labels > 0
        # Training negatives avoid training positives only: a held-out click is unknown to
        # training, exactly as a future click would be.
        train_pos = train_rows[positive[train_rows]]
        negative_weights = self._negative_weights(users, positive)

        def part(rows: torch.Tensor, avoid: torch.Tensor) -> InteractionBatches:
            sampler = NegativeSampler(users[avoid], items[avoid], self.n_users, self.n_items)
            return InteractionBatches(users[rows], items[rows], labels[rows],
                                      propensities[rows], negative_weights[rows], self.mode,
                                      self.negatives, self.seed, sampler)

        self.train = part(train_rows, train_pos)
        self.val = part(val_rows, positive.nonzero().squeeze(1)) if n_val else None

    def _negative_weights(self, users: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
        """Per row, the weight of each negative drawn for it (see ``negative_weighting``).
        One formula for both splits, from the user's rows in all of the data: each split
        then holds its share of the user's unlabeled pairs, as it holds its share of the
        positives, and the validation loss keeps the training loss's balance."""
        if self.negative_weighting == "sample" or not self.negatives:
            return torch.ones(len(users))
        rows = torch.bincount(users, minlength=self.n_users).clamp(min=1)
        unlabeled = self.n_items - torch.bincount(users[positive], minlength=self.n_users)
        per_user = unlabeled.clamp(min=0).float() / (self.negatives * rows)
        return per_user[users]

    def train_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users, items) of the training positives: what ``recommend(exclude=...)`` should
        usually leave out."""
        self.setup("fit")
        assert self.train is not None
        keep = self.train.labels > 0
        return self.train.users[keep], self.train.items[keep]

"""Pre-batched clicks for retrievers trained with in-batch negatives: one row per click,
(user, item) with the click's inverse examination propensity and the log of its item's
sampling probability, cut into batches seeded per epoch as :mod:`models.data` does.

A batch is a dict of tensors: ``users``, ``items``, ``weights`` of shape ``(B,)`` (B rows;
``weights`` is each click's inverse-propensity weight, clipped and normalized to mean 1 over
all the clicks given), ``negatives`` of shape ``(uniform_negatives,)`` and ``log_q`` of shape
``(B + uniform_negatives,)``. The negatives of a row are the batch's other clicked items
(Yi et al., RecSys 2019) followed by ``negatives``, items drawn uniformly from the whole
catalog per batch (the mixed negative sampling of Yang et al., "Mixed Negative Sampling for
Learning Two-tower Neural Networks in Recommendations", WWW 2020 Companion). In-batch
negatives alone never include an item nobody clicked, so nothing ever pushes such an item's
vector away from the users; a few uniform negatives do, which matters once the item vectors
fill an index over the whole catalog.

``log_q[j]`` is the log of the expected number of times column j's item is among a batch's
columns, ``B * Q(item) + uniform_negatives / n_items``, with Q the item's share of the clicks
(the chance that a row drawn for a batch holds it): the log-Q correction of the sampled
softmax over that mixture. A constant added to every column changes no softmax, so with no
uniform negatives this is ``log Q`` as in the paper. Q is a fixed count-based estimate over
the clicks given (training and validation rows together, since the split is random and both
are drawn from the same stream); Yi et al. estimate it by streaming over batches instead,
which matters for a stream whose item frequencies drift and not for a fixed log. Q counts
clicks unweighted whatever the propensities: the batches draw rows uniformly, so that is the
law of the negatives. Uniform draws are seeded by (seed, epoch, batch); validation batches
keep the same ones every epoch, so the monitored loss moves only when the model does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from models.data import Batch, PreBatchedDataModule, _generator
from models.propensity import inverse_propensity_weights

ArrayLike1D = Sequence[float] | np.ndarray | torch.Tensor


class ClickBatches(Dataset[Batch]):
    """Click rows indexed by a whole batch at once (:class:`models.data.EpochBatches`)."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor, weights: torch.Tensor,
                 q: torch.Tensor, uniform_negatives: int, seed: int) -> None:
        self.users, self.items, self.weights = users, items, weights
        #: Per catalog item: its share of the clicks, the chance a batch row holds it.
        self.q = q
        self.uniform_negatives, self.seed = uniform_negatives, seed

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, key: tuple[int, int, torch.Tensor]) -> Batch:  # type: ignore[override]
        epoch, number, rows = key
        items = self.items[rows]
        n_items = len(self.q)
        negatives = torch.randint(0, n_items, (self.uniform_negatives,),
                                  generator=_generator(self.seed, 2, epoch, number))
        columns = torch.cat([items, negatives])
        expected = len(rows) * self.q[columns] + self.uniform_negatives / n_items
        return {"users": self.users[rows], "items": items, "weights": self.weights[rows],
                "negatives": negatives, "log_q": torch.log(expected).float()}


class ClickDataModule(PreBatchedDataModule):
    """Clicks as pre-batched tensors for training and validation (see the module doc).

    ``users`` and ``items`` are contiguous indices, one entry per click. The examination
    propensity of each click is given either directly (``propensities``, in (0, 1]) or as
    its 1-based slate ``positions`` with an ``examination`` curve (``examination[p - 1]`` is
    the propensity of position ``p``, e.g. :func:`simulation.clicks.examination` or a
    :mod:`models.propensity` estimate); without either every weight is 1. Propensities are
    clipped at ``clip`` (weights at most ``1 / clip``) and the weights normalized to mean 1
    over all the clicks, so the loss keeps its scale whatever the curve. ``uniform_negatives``
    items from the whole catalog join each batch's negatives. ``val_fraction`` of the clicks,
    chosen with ``seed``, are held out for early stopping.
    """

    def __init__(
        self,
        users: ArrayLike1D,
        items: ArrayLike1D,
        *,
        propensities: ArrayLike1D | None = None,
        positions: ArrayLike1D | None = None,
        examination: ArrayLike1D | None = None,
        n_users: int | None = None,
        n_items: int | None = None,
        clip: float = 0.05,
        uniform_negatives: int = 0,
        batch_size: int = 1024,
        val_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        users_t = torch.tensor(np.asarray(users), dtype=torch.long)
        items_t = torch.tensor(np.asarray(items), dtype=torch.long)
        n = len(users_t)
        if users_t.ndim != 1 or items_t.shape != users_t.shape:
            raise ValueError(f"users and items must be 1-D of one length; got shapes "
                             f"{tuple(users_t.shape)} and {tuple(items_t.shape)}")
        if n == 0:
            raise ValueError("users=[] must hold at least one click")
        if batch_size < 2:
            # One row has no in-batch negative.
            raise ValueError(f"batch_size={batch_size} must be at least 2")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction={val_fraction} must be in [0, 1)")
        if uniform_negatives < 0:
            raise ValueError(f"uniform_negatives={uniform_negatives} must be >= 0")
        if not 0 < clip <= 1:
            raise ValueError(f"clip={clip} must be in (0, 1]")
        self.n_users = int(n_users if n_users is not None else users_t.max() + 1)
        self.n_items = int(n_items if n_items is not None else items_t.max() + 1)
        for name, values, bound in (("users", users_t, self.n_users),
                                    ("items", items_t, self.n_items)):
            if values.min() < 0 or values.max() >= bound:
                raise ValueError(f"{name}=[{int(values.min())}..{int(values.max())}] must be "
                                 f"indices in [0, {bound})")
        prop = self._propensities(n, propensities, positions, examination)
        weights = inverse_propensity_weights(prop, clip)
        self.clip, self.uniform_negatives = clip, uniform_negatives
        self.batch_size, self.val_fraction, self.seed = batch_size, val_fraction, seed
        self.weights = torch.tensor(weights / weights.mean(), dtype=torch.float32)
        #: Q per catalog item: its share of the clicks (0 for items never clicked).
        self.q = torch.bincount(items_t, minlength=self.n_items).double() / n
        self._rows = (users_t, items_t)
        self.train: ClickBatches | None = None
        self.val: ClickBatches | None = None

    @staticmethod
    def _propensities(n: int, propensities: ArrayLike1D | None, positions: ArrayLike1D | None,
                      examination: ArrayLike1D | None) -> np.ndarray:
        if propensities is not None and (positions is not None or examination is not None):
            raise ValueError("propensities=... must not come with positions and examination: "
                             "give one or the other")
        if (positions is None) != (examination is None):
            raise ValueError("positions and examination must be given together")
        if positions is not None and examination is not None:
            curve = np.asarray(examination, dtype=np.float64)
            where = np.asarray(positions)
            if where.shape != (n,):
                raise ValueError(f"positions has shape {where.shape}; must be ({n},)")
            if where.min() < 1 or where.max() > len(curve):
                raise ValueError(f"positions=[{where.min()}..{where.max()}] must be in "
                                 f"[1, {len(curve)}] (1-based, within the examination curve)")
            prop = curve[where.astype(np.int64) - 1]
        elif propensities is not None:
            prop = np.asarray(propensities, dtype=np.float64)
            if prop.shape != (n,):
                raise ValueError(f"propensities has shape {prop.shape}; must be ({n},)")
        else:
            return np.ones(n)
        bad = ~((prop > 0) & (prop <= 1))
        if bad.any():
            raise ValueError(f"propensities={prop[bad][:3].tolist()} must be in (0, 1]")
        return prop

    @property
    def n_clicks(self) -> int:
        """Clicks given, training and validation together."""
        return len(self._rows[0])

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        users, items = self._rows
        n = len(users)
        n_val = int(round(n * self.val_fraction))
        order = torch.randperm(n, generator=_generator(self.seed, 0))
        val_rows, train_rows = order[:n_val], order[n_val:]

        def part(rows: torch.Tensor) -> ClickBatches:
            return ClickBatches(users[rows], items[rows], self.weights[rows], self.q,
                                self.uniform_negatives, self.seed)

        self.train = part(train_rows)
        self.val = part(val_rows) if n_val else None

    def train_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users, items) of the training clicks, e.g. to leave out of an evaluation."""
        self.setup("fit")
        assert self.train is not None
        return self.train.users, self.train.items

"""A two-tower retriever trained from clicks with an in-batch sampled softmax, the log-Q
correction and inverse examination propensities.

Yi, Yang, Hong, Cheng, Heldt, Kumthekar, Zhao, Wei and Chi, "Sampling-Bias-Corrected Neural
Modeling for Large Corpus Item Recommendations", RecSys 2019: a user tower and an item tower,
each an MLP over an id embedding and optional features, map to L2-normalized vectors; the
score is ``<u, v> / temperature``. Each click is a positive for its user, and the batch's
other clicked items are its negatives (with, optionally, items drawn uniformly from the
catalog: :mod:`models.retrievers.data`). In-batch negatives are drawn in proportion to how often
items are clicked, so a plain softmax over them would push popular items down too hard; the
log-Q correction subtracts ``log Q(item)`` from every logit, which makes the batch's softmax
an estimate of the softmax over the whole catalog.

Clicks are position-biased: an item shown at the top is clicked more because it is examined
more (Joachims et al., "Unbiased learning-to-rank with biased feedback", WSDM 2017). Weighting
each click's loss by ``1 / P(examined | position)`` (clipped; see
:class:`models.retrievers.data.ClickDataModule`) removes that bias from the positives;
``ips=False`` gives the unweighted model.

Features are float matrices, ``(n_users, F_u)`` and ``(n_items, F_i)``: a categorical field
goes in one-hot (:func:`one_hot`), a text embedding as it is. They are buffers of the model,
so its state dict holds everything scoring needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as lightning
import torch
import torch.nn.functional as F
from torch import nn

from models.data import Batch
from models.retrievers.data import ClickDataModule
from models.topk import blockwise_topk
from models.training import EpochLosses, train

IndexLike = torch.Tensor | np.ndarray | Sequence[int]



def in_batch_softmax_loss(scores: torch.Tensor, items: torch.Tensor,
                          log_q: torch.Tensor | None = None,
                          weights: torch.Tensor | None = None) -> torch.Tensor:
    """The sampled softmax over a batch's columns, the positive of row ``i`` being column
    ``i``: mean over rows of ``w_i * -log softmax_j(s_ij - log Q_j)[i]``.

    ``scores`` (B, C), C >= B: user ``i`` against the item of column ``j``, the first B
    columns being the rows' clicked items (in-batch negatives) and any others extra sampled
    negatives; ``items`` (C,): each column's item; ``log_q`` (C,): log of each column's
    sampling probability (None: no correction), subtracted from its column for every row,
    the positive's included, as Yi et al. do; ``weights`` (B,): per-row weights (None: all
    1). A column holding the same item as a row's positive is masked out of that row's
    negatives: it is the positive again, not a negative.
    """
    n_rows, n_columns = scores.shape if scores.ndim == 2 else (0, 0)
    if not 0 < n_rows <= n_columns or items.shape != (n_columns,):
        raise ValueError(f"scores must be (B, C) with 0 < B <= C and items (C,); got "
                         f"{tuple(scores.shape)} and {tuple(items.shape)}")
    logits = scores if log_q is None else scores - log_q[None, :]
    target = torch.arange(n_rows, device=scores.device)
    same = items[:n_rows, None] == items[None, :]
    same[target, target] = False
    logits = logits.masked_fill(same, float("-inf"))
    losses = F.cross_entropy(logits, target, reduction="none")
    return losses.mean() if weights is None else (weights * losses).mean()


def one_hot(*columns: np.ndarray | Sequence[int]) -> np.ndarray:
    """Integer categorical columns of equal length as one float32 matrix of their one-hot
    codes side by side, each column with ``max + 1`` slots (e.g. a world's category, brand,
    colour and material: ``one_hot(world.category, world.brand, ...)``)."""
    if not columns:
        raise ValueError("columns=() must hold at least one column")
    arrays = [np.asarray(column, dtype=np.int64) for column in columns]
    n = len(arrays[0])
    blocks = []
    for number, codes in enumerate(arrays):
        if codes.shape != (n,):
            raise ValueError(f"columns[{number}] has shape {codes.shape}; must be ({n},)")
        if n and codes.min() < 0:
            raise ValueError(f"columns[{number}] holds {codes.min()}; codes must be >= 0")
        block = np.zeros((n, int(codes.max()) + 1 if n else 0), dtype=np.float32)
        block[np.arange(n), codes] = 1.0
        blocks.append(block)
    return np.concatenate(blocks, axis=1)


def _as_index(values: IndexLike, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor)
                           else values, dtype=torch.long, device=device)


class Tower(nn.Module):
    """Id embedding, concatenated with the row's features, through an MLP to a unit vector."""

    def __init__(self, n: int, features: torch.Tensor | None, id_dim: int,
                 hidden: Sequence[int], dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n, id_dim)
        nn.init.normal_(self.embedding.weight, 0.0, 0.1)
        self.register_buffer("features", features, persistent=features is not None)
        sizes = [id_dim + (0 if features is None else features.shape[1]), *hidden]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        x = self.embedding(rows)
        if self.features is not None:
            x = torch.cat([x, self.features[rows]], dim=-1)
        return F.normalize(self.mlp(x), dim=-1)


class TwoTower(EpochLosses, lightning.LightningModule):
    """See the module doc. ``dim``: the output vectors' size (the index's dimension);
    ``id_dim``: the id embeddings' size; ``hidden``: each tower's hidden layer sizes (``()``
    for a linear map); ``temperature``: divides the inner products (unit vectors score in
    [-1, 1], too flat a range for a softmax over many items); ``ips``: weight each click by
    its inverse examination propensity (the batch's ``weights``); ``log_q``: apply the
    sampling-bias correction; ``weight_decay``: Adam's L2; ``seed`` fixes the initial weights
    whatever else has drawn from the global generator."""

    kind = "two-tower"

    def __init__(self, n_users: int, n_items: int, *,
                 user_features: np.ndarray | torch.Tensor | None = None,
                 item_features: np.ndarray | torch.Tensor | None = None,
                 dim: int = 32, id_dim: int = 32, hidden: Sequence[int] = (64,),
                 temperature: float = 0.05, ips: bool = True, log_q: bool = True,
                 lr: float = 1e-2, weight_decay: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        for name, value in (("n_users", n_users), ("n_items", n_items), ("dim", dim),
                            ("id_dim", id_dim)):
            if value < 1:
                raise ValueError(f"{name}={value} must be >= 1")
        if any(h < 1 for h in hidden):
            raise ValueError(f"hidden={tuple(hidden)} must hold sizes >= 1")
        for name, value in (("temperature", temperature), ("lr", lr)):
            if not value > 0:
                raise ValueError(f"{name}={value} must be > 0")
        if weight_decay < 0:
            raise ValueError(f"weight_decay={weight_decay} must be >= 0")
        features = {}
        for name, given, rows in (("user_features", user_features, n_users),
                                  ("item_features", item_features, n_items)):
            if given is None:
                features[name] = None
                continue
            tensor = torch.as_tensor(np.asarray(given) if not isinstance(given, torch.Tensor)
                                     else given, dtype=torch.float32).clone()
            if tensor.ndim != 2 or tensor.shape[0] != rows:
                raise ValueError(f"{name} has shape {tuple(tensor.shape)}; must be "
                                 f"({rows}, F)")
            if not torch.isfinite(tensor).all():
                raise ValueError(f"{name} must be finite")
            features[name] = tensor
        # The feature matrices are data, kept as buffers, not hyper-parameters; their
        # widths are recorded so that a model can be rebuilt to load a state dict.
        self.save_hyperparameters(ignore=["user_features", "item_features"])
        self.hparams["hidden"] = list(hidden)
        for name, tensor in features.items():
            self.hparams[f"{name}_width"] = 0 if tensor is None else tensor.shape[1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.user_tower = Tower(n_users, features["user_features"], id_dim, hidden, dim)
            self.item_tower = Tower(n_items, features["item_features"], id_dim, hidden, dim)

    @property
    def n_users(self) -> int:
        return self.user_tower.embedding.num_embeddings

    @property
    def n_items(self) -> int:
        return self.item_tower.embedding.num_embeddings

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The (len(users), len(items)) matrix of scores ``<u, v> / temperature``."""
        return self.user_tower(users) @ self.item_tower(items).T / self.hparams["temperature"]

    def loss(self, batch: Batch) -> torch.Tensor:
        """The batch's in-batch softmax loss (:func:`in_batch_softmax_loss`)."""
        columns = torch.cat([batch["items"], batch["negatives"]])
        return in_batch_softmax_loss(
            self(batch["users"], columns), columns,
            batch["log_q"] if self.hparams["log_q"] else None,
            batch["weights"] if self.hparams["ips"] else None)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.add_train_losses({"loss": loss}, len(batch["users"]))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        # Synced: each process validates its share, and early stopping and the best epoch
        # must be decided on the whole split, the same way by every process.
        self.log("val_loss", self.loss(batch), on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=len(batch["users"]), sync_dist=True)

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"],
                                weight_decay=self.hparams["weight_decay"])

    @torch.no_grad()
    def user_vectors(self, users: IndexLike) -> np.ndarray:
        """Unit vectors of ``users``, (n, dim) float32: the queries of the index."""
        return self.user_tower(_as_index(users, self.device)).float().cpu().numpy()

    @torch.no_grad()
    def item_vectors(self, items: IndexLike | None = None) -> np.ndarray:
        """Unit vectors of ``items`` (None: the whole catalog, in index order), (n, dim)
        float32: what fills the index; inner product ranks as the model does."""
        rows = (torch.arange(self.n_items, device=self.device) if items is None
                else _as_index(items, self.device))
        if not len(rows):
            return np.empty((0, self.hparams["dim"]), dtype=np.float32)
        # In blocks: one pass over a large catalog would hold every hidden activation at once.
        return torch.cat([self.item_tower(block) for block in rows.split(1 << 16)]
                         ).float().cpu().numpy()

    @torch.no_grad()
    def recommend(self, users: IndexLike, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` best items of the whole catalog for each of ``users`` by exact search,
        and their scores, each (n, k), best first (the index gives the same at scale)."""
        if k < 1:
            raise ValueError(f"k={k} must be >= 1")
        k = min(k, self.n_items)
        users_t = _as_index(users, self.device)
        items = torch.cat([self.item_tower(block) for block in
                           torch.arange(self.n_items, device=self.device).split(1 << 16)])
        temperature = self.hparams["temperature"]
        return blockwise_topk(
            len(users_t), self.n_items, k,
            lambda start, stop: self.user_tower(users_t[start:stop]) @ items.T / temperature,
            self.device)


def fit_two_tower(model: TwoTower, data: ClickDataModule, *, max_epochs: int = 30,
                  patience: int = 3, seed: int = 0, enable_progress_bar: bool = False,
                  **trainer_options: Any) -> lightning.Trainer:
    """Train ``model`` on ``data`` and return the trainer, early stopping on ``val_loss``
    with the best epoch's weights restored (:func:`models.training.train`)."""
    if (data.n_users, data.n_items) != (model.n_users, model.n_items):
        raise ValueError(f"the data has {data.n_users} users and {data.n_items} items, the "
                         f"model {model.n_users} and {model.n_items}")
    return train(model, data, "val_loss", max_epochs=max_epochs, patience=patience, seed=seed,
                 enable_progress_bar=enable_progress_bar, **trainer_options)

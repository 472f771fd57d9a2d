"""Features for the linear bandits: the request's context crossed with each candidate's vector.

- **User part** ``u`` (B, U): a constant 1, the declared numeric fields of the event's
  ``context`` as given, and the declared categorical fields hashed into ``n_hash_buckets``
  signed buckets (the hashing trick: Weinberger, Dasgupta, Langford, Smola and Attenberg,
  "Feature hashing for large scale multitask learning", ICML 2009). No vocabulary is kept, so
  a value never seen before still lands in a bucket; a missing or None categorical value adds
  nothing. The hash is BLAKE2b of ``field``, the value and ``seed``: stable across processes,
  machines and Python versions (Python's own ``hash`` of a string is salted per process).
- **Item part** ``x`` (B, N, X): a constant 1, the item's vector (item features, or an
  embedding from the retrieval index or a recommender artifact), and, with ``cold_start``,
  a column that is 1 for an item never seen (:class:`ItemVectors` gives such an item its
  prior vector).
- **Crossing**: ``"outer"`` is ``vec(u x^T)``, U * X features, user-major (feature
  ``i * X + j`` is ``u_i x_j``); it holds ``u`` and ``x`` themselves through the two constant
  columns, and lets the weight of an item direction depend on the user. ``"concat"`` is
  ``[u, x[1:]]``, U + X - 1 features: no interaction, one shared constant.

Cold start: an item the learner never saw has no statistics of its own; its score is then
features-only (its prior vector crossed with the user, plus the learned cold-start column),
and :class:`ColdStartPrior` gives its per-item statistics a pseudo-count start.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Literal

import numpy as np
import polars as pl
import torch
from numpy.typing import ArrayLike

#: Contexts of a batch: one mapping per request, or a polars frame with one row per request.
Contexts = Sequence[Mapping[str, Any]] | pl.DataFrame


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def stable_hash(text: str, seed: int = 0) -> int:
    """A 64-bit hash of ``text`` that every process computes alike (BLAKE2b, 8 bytes)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8,
                             salt=(seed % (1 << 64)).to_bytes(8, "little"))
    return int.from_bytes(digest.digest(), "little")


@functools.lru_cache(maxsize=1 << 16)
def hashed_bucket(name: str, value: str, n_buckets: int, seed: int = 0) -> tuple[int, int]:
    """The bucket and sign (+1 or -1) of ``name=value``: the low 63 bits choose the bucket,
    the top bit the sign, so that colliding values cancel in expectation (Weinberger et al.
    2009). Cached: a batch repeats the same few values."""
    h = stable_hash(f"{name}\x1f{value}", seed)
    return (h & ((1 << 63) - 1)) % n_buckets, 1 if h >> 63 else -1


def _rows(contexts: Contexts) -> int:
    return contexts.height if isinstance(contexts, pl.DataFrame) else len(contexts)


def _numeric_column(contexts: Contexts, name: str) -> np.ndarray:
    if isinstance(contexts, pl.DataFrame):
        if name not in contexts.columns:
            raise ValueError(f"contexts has no column {name!r} (declared in user_numeric)")
        series = contexts[name]
        if not (series.dtype.is_numeric() or series.dtype == pl.Boolean):
            first = series.drop_nulls().head(1).to_list()
            raise ValueError(f"contexts[{name!r}] has dtype {series.dtype} (e.g. "
                             f"{_show(first[0] if first else None)}): it must be numeric "
                             "(declared in user_numeric)")
        values = series.cast(pl.Float64).to_numpy()
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            b = int(bad[0])
            raise ValueError(f"contexts[{b}][{name!r}]={_show(series[b])} must be a finite "
                             "number (declared in user_numeric)")
        return values
    out = np.empty(len(contexts))
    for b, context in enumerate(contexts):
        if name not in context:
            raise ValueError(f"contexts[{b}] has no {name!r} (declared in user_numeric)")
        value = context[name]
        if not isinstance(value, Real) or not math.isfinite(value):
            raise ValueError(f"contexts[{b}][{name!r}]={_show(value)} must be a finite "
                             "number (declared in user_numeric)")
        out[b] = value
    return out


def _categorical_column(contexts: Contexts, name: str) -> list[str | None]:
    if isinstance(contexts, pl.DataFrame):
        if name not in contexts.columns:
            return [None] * contexts.height
        values = contexts[name].to_list()
    else:
        values = [context.get(name) for context in contexts]
    out: list[str | None] = []
    for b, value in enumerate(values):
        if value is None or isinstance(value, str):
            out.append(value)
        elif isinstance(value, Integral):  # bool included: "True" / "False"
            out.append(str(value) if isinstance(value, bool) else str(int(value)))
        else:
            raise ValueError(f"contexts[{b}][{name!r}]={_show(value)} must be a string or an "
                             "integer (declared in user_categorical)")
    return out


@dataclass(frozen=True)
class ContextFeatures:
    """User context crossed with item vectors (see the module doc for the layout).

    ``n_hash_buckets``: width of the hashed categorical block (present only when
    ``user_categorical`` is not empty); ``user_numeric`` / ``user_categorical``: the context
    fields used; ``cross``: ``"outer"`` or ``"concat"``; ``cold_start``: add the cold-item
    column to the item part; ``seed``: the hash's; ``dtype``: of the features.
    """

    n_hash_buckets: int = 64
    user_numeric: tuple[str, ...] = ()
    user_categorical: tuple[str, ...] = ()
    cross: Literal["outer", "concat"] = "outer"
    cold_start: bool = True
    seed: int = 0
    dtype: torch.dtype = torch.float64

    def __post_init__(self) -> None:
        n = self.n_hash_buckets
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n_hash_buckets={n!r} must be an integer >= 1")
        for name in ("user_numeric", "user_categorical"):
            names = getattr(self, name)
            if isinstance(names, str) or not all(isinstance(f, str) and f for f in names):
                raise ValueError(f"{name}={_show(names)} must be a tuple of field names")
            object.__setattr__(self, name, tuple(names))
        both = set(self.user_numeric) & set(self.user_categorical)
        if both or len(set(self.user_numeric)) < len(self.user_numeric) or len(
                set(self.user_categorical)) < len(self.user_categorical):
            raise ValueError(f"user_numeric={self.user_numeric!r} and user_categorical="
                             f"{self.user_categorical!r} must name each field once")
        if self.cross not in ("outer", "concat"):
            raise ValueError(f"cross={self.cross!r} must be 'outer' or 'concat'")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed={self.seed!r} must be an integer")
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise ValueError(f"dtype={self.dtype!r} must be a floating torch dtype")

    @property
    def user_dim(self) -> int:
        """U: the constant, the numeric fields, the hashed block."""
        return (1 + len(self.user_numeric)
                + (self.n_hash_buckets if self.user_categorical else 0))

    def item_part_dim(self, item_dim: int) -> int:
        """X: the constant, the item vector, the cold column."""
        return 1 + item_dim + int(self.cold_start)

    def dim(self, item_dim: int) -> int:
        """d, the width of :meth:`transform`'s features for items of ``item_dim``."""
        x = self.item_part_dim(item_dim)
        return self.user_dim * x if self.cross == "outer" else self.user_dim + x - 1

    def user_features(self, contexts: Contexts, device: torch.device | str | None = None
                      ) -> torch.Tensor:
        """u, (B, U): 1, the numeric fields, the signed hashed categorical counts."""
        if not isinstance(contexts, pl.DataFrame) and (
                isinstance(contexts, Mapping) or not isinstance(contexts, Sequence)):
            raise ValueError(f"contexts={_show(contexts)} must be a sequence of mappings (one "
                             "per request) or a polars DataFrame")
        rows = _rows(contexts)
        out = np.zeros((rows, self.user_dim))
        out[:, 0] = 1.0
        for j, name in enumerate(self.user_numeric):
            out[:, 1 + j] = _numeric_column(contexts, name)
        start = 1 + len(self.user_numeric)
        for name in self.user_categorical:
            values = _categorical_column(contexts, name)
            codes: dict[str, int] = {}
            index = np.array([-1 if v is None else codes.setdefault(v, len(codes))
                              for v in values], dtype=np.int64)
            if not codes:
                continue
            hashed = np.array([hashed_bucket(name, v, self.n_hash_buckets, self.seed)
                               for v in codes], dtype=np.int64).reshape(-1, 2)
            present = np.flatnonzero(index >= 0)
            np.add.at(out, (present, start + hashed[index[present], 0]),
                      hashed[index[present], 1])
        return torch.as_tensor(out, dtype=self.dtype, device=device)

    def transform(self, contexts: Contexts, item_vectors: torch.Tensor | ArrayLike,
                  known: torch.Tensor | ArrayLike | None = None) -> torch.Tensor:
        """Features (B, N, d) of every candidate of every request, on ``item_vectors``'s
        device. ``item_vectors``: (B, N, D); ``known``: (B, N), False for an item never seen
        (the cold column's 1); all known when None."""
        items = torch.as_tensor(item_vectors)
        if items.ndim != 3:
            raise ValueError(f"item_vectors.shape={tuple(items.shape)} must be (B, N, D)")
        rows, width, _ = items.shape
        if _rows(contexts) != rows:
            raise ValueError(f"contexts has {_rows(contexts)} rows; item_vectors has {rows} "
                             "(one row of candidates per request)")
        items = items.to(self.dtype)
        if not torch.isfinite(items).all():
            b, n, j = (int(v) for v in torch.nonzero(~torch.isfinite(items))[0])
            raise ValueError(f"item_vectors[{b}, {n}, {j}]={float(items[b, n, j])!r} must be "
                             "finite")
        parts = [torch.ones((rows, width, 1), dtype=self.dtype, device=items.device), items]
        if self.cold_start:
            seen = (torch.ones((rows, width), dtype=torch.bool, device=items.device)
                    if known is None else torch.as_tensor(known, device=items.device))
            if seen.shape != (rows, width):
                raise ValueError(f"known.shape={tuple(seen.shape)} must be {(rows, width)}")
            parts.append((~seen.to(torch.bool)).to(self.dtype)[:, :, None])
        x = torch.cat(parts, dim=2)
        u = self.user_features(contexts, device=items.device)
        if self.cross == "outer":
            return torch.einsum("bu,bnx->bnux", u, x).reshape(rows, width, -1)
        return torch.cat([u[:, None, :].expand(rows, width, -1), x[:, :, 1:]], dim=2)


class ItemVectors:
    """Item id -> vector, for the item part: the embeddings of the retrieval index or of a
    recommender artifact, or item features. An id not in the table (a cold item) gets the
    ``prior`` vector: ``"mean"``, the mean of the known vectors (the best guess of an unseen
    item's vector, so its features-only score is the average item's), or ``"zero"``."""

    def __init__(self, ids: Sequence[str], vectors: ArrayLike,
                 prior: Literal["mean", "zero"] = "mean") -> None:
        table = np.asarray(vectors, dtype=np.float64)
        if table.ndim != 2 or len(table) != len(ids):
            raise ValueError(f"vectors.shape={table.shape} must be (len(ids)={len(ids)}, D)")
        if not np.isfinite(table).all():
            raise ValueError("vectors must be finite")
        if prior not in ("mean", "zero"):
            raise ValueError(f"prior={prior!r} must be 'mean' or 'zero'")
        self.index_ = {str(item): n for n, item in enumerate(ids)}
        if len(self.index_) != len(ids):
            raise ValueError("ids must be unique")
        self.prior = prior
        prior_vector = (table.mean(axis=0) if prior == "mean" and len(table)
                        else np.zeros(table.shape[1]))
        # The prior is the table's last row, so one gather serves known and cold items.
        self.vectors_ = torch.as_tensor(np.vstack([table, prior_vector]))

    @property
    def dim(self) -> int:
        return int(self.vectors_.shape[1])

    def lookup(self, item_ids: ArrayLike, dtype: torch.dtype = torch.float64
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(vectors (B, N, D), known (B, N)) for an id array such as
        ``Candidates.item_ids``; an unknown id gets the prior and known False, as does
        padding (None)."""
        ids = np.asarray(item_ids, dtype=object)
        cold = len(self.vectors_) - 1
        distinct: dict[object, int] = {}
        codes = np.array([distinct.setdefault(i, len(distinct)) for i in ids.ravel()],
                         dtype=np.int64)
        rows = np.array([cold if i is None else self.index_.get(str(i), cold)
                         for i in distinct], dtype=np.int64)
        where = torch.as_tensor(rows[codes].reshape(ids.shape))
        return self.vectors_[where].to(dtype), where != cold


@dataclass(frozen=True)
class ColdStartPrior:
    """A pseudo-count prior for an item's own statistics: the item starts as if it had been
    shown ``pseudo_count`` times at its own features with reward ``mean_reward`` (the
    conjugate-prior reading of ridge regression: pseudo-observations added to the data).

    Added to a ridge model's ``A = lambda I`` and ``b = 0``, the start predicts, at the
    item's features x, ``n0 |x|^2 r / (lambda + n0 |x|^2)``: near ``mean_reward`` rather than
    0, and the item's own data outweighs the prior once its count passes ``pseudo_count``.
    """

    pseudo_count: float = 1.0
    mean_reward: float = 0.0

    def __post_init__(self) -> None:
        n = self.pseudo_count
        if isinstance(n, bool) or not isinstance(n, Real) or not 0 <= n < math.inf:
            raise ValueError(f"pseudo_count={n!r} must be a finite number >= 0")
        r = self.mean_reward
        if isinstance(r, bool) or not isinstance(r, Real) or not math.isfinite(r):
            raise ValueError(f"mean_reward={r!r} must be a finite number")

    def statistics(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A (M, d, d), b (M, d)) of the pseudo-observations for M items' features (M, d)."""
        x = torch.as_tensor(features)
        if x.ndim != 2:
            raise ValueError(f"features.shape={tuple(x.shape)} must be (M, d)")
        outer = x[:, :, None] * x[:, None, :]
        return self.pseudo_count * outer, (self.pseudo_count * self.mean_reward) * x

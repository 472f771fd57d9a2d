"""Input checks for the index: every error names the field and the value it got."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class IndexInputError(ValueError):
    """A bad argument to the index; the message reads ``field=value must ...``."""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_ids(ids: Sequence[str], field: str = "ids") -> list[str]:
    """The ids as a list of non-empty, distinct strings."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise IndexInputError(f"{field}={_show(ids)} must be a sequence of strings")
    out = list(ids)
    seen: set[str] = set()
    for item in out:
        if not isinstance(item, str) or not item:
            raise IndexInputError(f"{field} item {_show(item)} must be a non-empty string")
        if item in seen:
            raise IndexInputError(f"{field} item {item!r} must not repeat within one call")
        seen.add(item)
    return out


def check_vectors(vectors: Any, dim: int, field: str = "vectors", rows: int | None = None
                  ) -> np.ndarray:
    """A C-contiguous float32 copy of ``vectors`` (rows, dim), L2-normalized."""
    arr = np.asarray(vectors)
    if arr.dtype.kind != "f":
        raise IndexInputError(f"{field}.dtype={arr.dtype} must be a floating dtype (float32)")
    if arr.ndim != 2:
        raise IndexInputError(f"{field}.shape={arr.shape} must be 2-D (n, {dim})")
    if arr.shape[1] != dim:
        raise IndexInputError(f"{field}.shape={arr.shape} must have {dim} columns (dim)")
    if rows is not None and arr.shape[0] != rows:
        raise IndexInputError(f"{field}.shape={arr.shape} must have {rows} rows, one per id")
    out = np.ascontiguousarray(arr, dtype=np.float32).copy()
    if not np.isfinite(out).all():
        raise IndexInputError(f"{field} must be finite (found NaN or inf)")
    norms = np.linalg.norm(out, axis=1)
    if (norms == 0).any():
        bad = int(np.flatnonzero(norms == 0)[0])
        raise IndexInputError(f"{field}[{bad}] must not be the zero vector")
    out /= norms[:, None]
    return out


def check_positive_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise IndexInputError(f"{field}={_show(value)} must be a positive integer")
    return int(value)

"""What the propensity estimators share: reading the join's columns, encoding keys, checking
hyper-parameters, and keeping learned state on frozen hyper-parameter dataclasses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np
import polars as pl
from numpy.typing import ArrayLike
from sklearn.exceptions import NotFittedError

#: A log to fit on: a polars frame with the impression-click join's columns
#: (:func:`ingest.joins.impression_click_join`), or the same columns as arrays by name.
Log: TypeAlias = pl.DataFrame | pl.LazyFrame | Mapping[str, ArrayLike]

#: Parameters are kept this far inside (0, 1): the E-steps divide by 1 - theta * gamma and the
#: likelihoods take logs, and a probability of exactly 0 or 1 would stick there for good.
EPS = 1e-6


def check(name: str, value: Any, ok: bool, rule: str) -> None:
    """Raise ``ValueError("name=value must rule")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{name}={value!r} must {rule}")


class Fitted:
    """Learned state (names ending in ``_``) on a frozen dataclass of hyper-parameters.

    The dataclass is frozen so that hyper-parameters cannot change under a fitted model;
    what ``fit`` learns is not a hyper-parameter, so it is written past the freeze."""

    def _learn(self, **state: Any) -> None:
        for name, value in state.items():
            assert name.endswith("_"), name
            object.__setattr__(self, name, value)

    def _check_fitted(self, name: str) -> None:
        if name not in self.__dict__:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: "
                                 "call fit(...) first")


class PositionCurve(Fitted):
    """An estimator whose learned state includes ``examination_``, indexed by position - 1
    and relative to position 1."""

    def predict(self, position: ArrayLike) -> np.ndarray:
        """The estimated examination (relative to position 1) at these 1-based positions."""
        self._check_fitted("examination_")
        curve = self.examination_  # type: ignore[attr-defined]
        index = np.asarray(position, dtype=np.int64) - 1
        bad = (index < 0) | (index >= len(curve))
        check("position", (index[bad][:1] + 1).tolist(), not bad.any(),
              f"be in [1, {len(curve)}] (the positions fitted)")
        return curve[index]


def check_key(key: Any) -> None:
    check("key", key, key is None or (
        isinstance(key, tuple | list) and len(key) > 0
        and all(isinstance(name, str) for name in key)),
        "be None or a non-empty tuple of column names")


def columns(log: Log, names: Sequence[str]) -> pl.DataFrame:
    """The named columns of ``log`` as an eager frame; a clear error for a missing one."""
    if isinstance(log, pl.LazyFrame):
        available = log.collect_schema().names()
    elif isinstance(log, pl.DataFrame):
        available = log.columns
    elif isinstance(log, Mapping):
        available = list(log)
    else:
        raise TypeError(f"log must be a polars DataFrame or LazyFrame or a mapping of column "
                        f"name to array, not {type(log).__name__}")
    missing = [name for name in names if name not in available]
    if missing:
        raise ValueError(f"log has no column {missing[0]!r} (it has {sorted(available)})")
    if isinstance(log, pl.LazyFrame):
        return log.select(names).collect()
    if isinstance(log, pl.DataFrame):
        return log.select(names)
    return pl.DataFrame({name: _column(log[name]) for name in names})


def _column(values: ArrayLike) -> Any:
    # polars keeps a NumPy object array (ids with a None among them) as opaque objects;
    # as a list it infers the type (String, with nulls).
    if isinstance(values, np.ndarray) and values.dtype == object:
        return values.tolist()
    return values


def default_key(log: Log) -> tuple[str, ...]:
    """(query, item_id) for a search log, (user_id, item_id) for one without queries: the
    pair whose relevance stays the same from one impression to the next."""
    try:
        query = columns(log, ["query"])["query"]
    except ValueError:
        return ("user_id", "item_id")
    return ("query", "item_id") if query.null_count() < len(query) else ("user_id", "item_id")


def encode(frame: pl.DataFrame, names: Sequence[str]) -> tuple[np.ndarray, pl.DataFrame]:
    """Codes 0..n-1 for the distinct values of ``names`` (nulls are a value like any other),
    and the distinct values in code order."""
    code = frame.select(pl.struct(list(names)).rank("dense").cast(pl.Int64) - 1).to_series()
    uniques = (frame.select(names).with_columns(code.alias("__code"))
               .unique("__code").sort("__code").drop("__code"))
    return code.to_numpy(), uniques


def positions(frame: pl.DataFrame, n_positions: int | None) -> tuple[np.ndarray, int]:
    """Zero-based positions and the number of positions estimated."""
    position = frame["position"]
    check("position", position.dtype, position.dtype.is_integer(), "be an integer column")
    if position.null_count():
        raise ValueError("position=null must be an integer >= 1 (a row has no position)")
    index = position.to_numpy().astype(np.int64) - 1
    if len(index) == 0:
        raise ValueError("log has no rows to fit on")
    check("position", int(index.min()) + 1, index.min() >= 0, "be >= 1")
    return index, int(index.max()) + 1 if n_positions is None else n_positions


def clicks(frame: pl.DataFrame) -> np.ndarray:
    """The ``clicked`` column as 0.0 / 1.0."""
    clicked = frame["clicked"]
    if clicked.null_count():
        raise ValueError("clicked=null must be true or false (a row has no click flag)")
    values = clicked.to_numpy().astype(np.float64)
    bad = (values != 0) & (values != 1)
    check("clicked", values[bad][:1].tolist(), not bad.any(), "be 0/1 or a boolean")
    return values


def cells(group: np.ndarray, position: np.ndarray, clicked: np.ndarray, k: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Slots summed by (group, position): the group and position of each non-empty cell, its
    slots and its clicks. A position-based model sees a log only through these counts, so
    the estimators iterate over cells, not slots. Slots deeper than ``k`` are left out."""
    keep = position < k
    # Sorted rather than counted into a groups x k array: a search log can have millions
    # of (query, item) keys, most of them shown at one or two positions.
    cell, inverse = np.unique(group[keep].astype(np.int64) * k + position[keep],
                              return_inverse=True)
    shown = np.bincount(inverse, minlength=len(cell)).astype(np.float64)
    clicked_ = np.bincount(inverse, weights=clicked[keep], minlength=len(cell))
    return cell // k, cell % k, shown, clicked_


def missing_positions(shown_at: np.ndarray) -> list[int]:
    """One-based positions without a single slot."""
    return [int(p) + 1 for p in np.flatnonzero(shown_at == 0)]

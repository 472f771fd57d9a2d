"""Behaviour logs with string item ids for off-policy evaluation: a generic CSV or parquet log
(``--format generic``), a parquet log store written by the consumer (``--format log``), item
features, and an evaluation policy given as an ``item_id,position,probability`` table.

Items are indexed 0..n_items-1 in the sorted order of their ids (as strings: ``"007"`` and
``"7"`` are two items); positions are 1-based in the files and 0-based in the arrays. A log
becomes the estimators' :class:`~bandits.ope.obd.ObdLog` once an evaluation policy is chosen
(:meth:`SlateLog.evaluation`), so that every format shares one reward model and one
:func:`~bandits.ope.evaluate` path."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl

from bandits.ope.data import OPEData, OPEInputError
from bandits.ope.obd import ObdLog

#: Prefix of the generic log's numeric user feature columns.
USER_PREFIX = "user_"
#: Tolerance of an evaluation policy's column sums.
SUM_TOLERANCE = 1e-6


#: The most (row, item, position) values an evaluation may span (float64: 2 GiB).
MAX_POLICY_VALUES = 2**28


@dataclass(frozen=True)
class SlateLog:
    """n shown slots of a behaviour log: ``reward``, ``action`` (index into ``item_ids``),
    ``position`` (0-based), ``pscore`` (the logging policy's probability of the item at its
    position), ``slate`` (index of the slot's round into ``contexts``), the rows' numeric
    ``user`` features (n, du) named ``user_columns``; ``contexts``, one JSON text (or None)
    per round, where the log kept the impression's context (the log store); ``rejected``,
    the rows left out, each as ``line N: reason``."""

    reward: np.ndarray
    action: np.ndarray
    position: np.ndarray
    pscore: np.ndarray
    slate: np.ndarray
    item_ids: tuple[str, ...]
    user: np.ndarray
    user_columns: tuple[str, ...] = ()
    contexts: tuple[str | None, ...] | None = None
    rejected: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = self.reward.shape[0]
        for name in ("action", "position", "pscore", "slate"):
            if getattr(self, name).shape != (n,):
                raise OPEInputError(f"{name} has shape {getattr(self, name).shape}; reward "
                                    f"has ({n},)")
        if self.user.shape[0] != n:
            raise OPEInputError(f"user has {self.user.shape[0]} rows; reward has {n}")
        if list(self.item_ids) != sorted(set(self.item_ids)):
            raise OPEInputError("item_ids must be sorted and distinct")

    @property
    def n(self) -> int:
        return int(self.reward.shape[0])

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_positions(self) -> int:
        """The deepest logged position (1-based), so the number of positions."""
        return int(self.position.max()) + 1

    def with_items(self, ids: Iterable[str]) -> SlateLog:
        """The log over the sorted union of its items and ``ids`` (e.g. the items an
        evaluation policy may show that the log never did)."""
        items = tuple(sorted(set(self.item_ids) | {str(i) for i in ids}))
        if items == self.item_ids:
            return self
        where = np.searchsorted(np.asarray(items, dtype=object),
                                np.asarray(self.item_ids, dtype=object))
        return replace(self, action=where[self.action], item_ids=items)

    def evaluation(self, action_dist: np.ndarray, item: np.ndarray | None = None) -> ObdLog:
        """The log with the evaluation policy ``action_dist`` ((n, n_items, n_positions), or
        (n_items, n_positions) for a policy that ignores the row) and the items' features
        ``item`` (n_items, di; none when None: the reward model then knows items by their
        one-hot alone). There is no user x item affinity: a zero column stands in for it."""
        dist = np.asarray(action_dist, dtype=np.float64)
        if dist.ndim == 2:
            dist = np.broadcast_to(dist[None], (self.n, *dist.shape))
        if dist.shape[:2] != (self.n, self.n_items):
            raise OPEInputError(f"action_dist has shape {dist.shape}; the log has {self.n} rows "
                                f"and {self.n_items} items")
        if self.n * self.n_items * self.n_positions > MAX_POLICY_VALUES:
            # The estimators weigh every (row, item, position): dense arrays of that size.
            raise OPEInputError(
                f"{self.n:,} rows x {self.n_items:,} items x {self.n_positions} positions is "
                f"more than {MAX_POLICY_VALUES:,} values to evaluate over: evaluate a sample "
                "of the log, or a log over fewer items")
        if item is None:
            item = np.zeros((self.n_items, 0))
        if item.shape[0] != self.n_items:
            raise OPEInputError(f"item features have {item.shape[0]} rows; the log has "
                                f"{self.n_items} items")
        data = OPEData(self.reward, self.action, self.position, self.pscore, dist)
        # Zero strides: the affinity costs no memory until a resample gathers it.
        affinity = np.broadcast_to(np.zeros(1), (self.n, self.n_items))
        return ObdLog(data, self.user, affinity, item)


def _standardized(values: np.ndarray) -> np.ndarray:
    """Columns scaled to mean 0 and variance 1 (a constant one left at 0), so that the reward
    model's penalty weighs every feature alike whatever its unit."""
    if not values.size:
        return values
    scale = values.std(axis=0)
    return (values - values.mean(axis=0)) / np.where(scale > 0, scale, 1.0)


def _indexed(ids: Sequence[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    items, action = np.unique(np.asarray(ids, dtype=object), return_inverse=True)
    return action.astype(np.int64), tuple(str(i) for i in items)


def _slates(ids: Sequence[object]) -> tuple[np.ndarray, np.ndarray]:
    """Each row's round as 0.. in order of first appearance, and each round's first row."""
    _, first, inverse = np.unique(np.asarray(ids, dtype=object), return_index=True,
                                  return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[inverse.ravel()].astype(np.int64), first[order]


def read_generic_log(path: str | os.PathLike[str]) -> SlateLog:
    """A CSV or parquet log, one row per shown slot: ``item_id`` (text), ``position``
    (1-based), ``reward`` (or ``click``; 0 or 1), ``propensity`` (in (0, 1]), optionally
    ``round`` (or ``request_id``: the rows of one slate) and numeric ``user_*`` features.

    A row with a value that does not parse, an empty ``item_id``, a position below 1, a
    reward other than 0 or 1 or a propensity outside (0, 1] is left out and listed in
    ``rejected`` with its line (a CSV's header is line 1; a parquet file's rows count from 1)
    and column. No usable row left is
    an :class:`OPEInputError`."""
    from ingest.adapters import SOURCE_LINE, cast_columns, read_table
    from ingest.validation import LINE

    table, unreadable = read_table(path, {})
    columns = [c for c in table.columns if c != SOURCE_LINE]
    reward = next((c for c in ("reward", "click") if c in columns), None)
    missing = [c for c, found in (("item_id", "item_id" in columns),
                                  ("position", "position" in columns),
                                  ("reward (or click)", reward is not None),
                                  ("propensity", "propensity" in columns)) if not found]
    if missing:
        raise OPEInputError(f"{path}: no column {', '.join(missing)}; columns are {columns}")
    round_column = next((c for c in ("round", "request_id") if c in columns), None)
    users = [c for c in columns if c.startswith(USER_PREFIX)]
    kinds = {"item_id": ("item_id", "id"), "position": ("position", "integer"),
             "reward": (reward, "number"), "propensity": ("propensity", "number")}
    kinds |= {c: (c, "number") for c in users}
    if round_column is not None:
        kinds["round"] = (round_column, "id")
    rows, bad = cast_columns(table, kinds, required=[k for k in kinds if k != "round"])
    where = "row" if str(path).lower().endswith(".parquet") else "line"
    rejected = [(r.line, r.reason) for r in [*unreadable, *bad]]
    # Parsed, but outside what a slot can be: the first failing check names the row.
    checks = [(pl.col("item_id").str.strip_chars() == "", pl.lit("column 'item_id' is empty")),
              (pl.col("position") < 1,
               pl.format("column 'position'={} must be >= 1", "position")),
              (~((pl.col("propensity") > 0) & (pl.col("propensity") <= 1)),
               pl.format("column 'propensity'={} must be in (0, 1]", "propensity")),
              (~pl.col("reward").is_in([0.0, 1.0]),
               # The reward model is a classifier of clicks (as Open Bandit Pipeline's).
               pl.format(f"column {reward!r}={{}} must be 0 or 1", "reward"))]
    checks += [(~pl.col(c).is_finite(), pl.format(f"column {c!r}={{}} must be a finite number",
                                                  pl.col(c))) for c in users]
    reason = pl.coalesce(pl.when(mask).then(text) for mask, text in checks)
    rows = rows.with_columns(__reason=reason)
    rejected += rows.filter(pl.col("__reason").is_not_null()).select(LINE, "__reason").rows()
    failed = pl.col("__reason").is_not_null()
    rows = rows.filter(~failed)
    messages = tuple(f"{where} {line}: {reason}" for line, reason in sorted(rejected))
    if not rows.height:
        raise OPEInputError(f"{path}: no usable row"
                            + (f" ({len(messages)} rejected; the first, {messages[0]})"
                               if messages else ""))
    action, items = _indexed(rows["item_id"].to_list())
    if round_column is None:
        slate = np.arange(rows.height)
    else:
        slate, _ = _slates(rows["round"].cast(pl.String).to_list())
    user = rows.select(users).to_numpy().astype(np.float64) if users else np.zeros(
        (rows.height, 0))
    return SlateLog(rows["reward"].to_numpy().astype(np.float64), action,
                    rows["position"].to_numpy().astype(np.int64) - 1,
                    rows["propensity"].to_numpy().astype(np.float64), slate, items,
                    _standardized(user), tuple(users), rejected=messages)


def _context_features(context: pl.Series, fields: Sequence[str] | None, root: object
                      ) -> tuple[np.ndarray, tuple[str, ...]]:
    """The numeric fields of each row's context JSON (``fields``, or all numeric ones); a row
    whose context lacks a field reads 0 there, as the online learner reads it."""
    decoded = None
    if context.null_count() < len(context):
        decoded = context.str.json_decode(infer_schema_length=None)
    if decoded is None or not isinstance(decoded.dtype, pl.Struct):
        found = pl.DataFrame()
    else:
        found = decoded.struct.unnest()
    numeric = [c for c in found.columns if found.schema[c].is_numeric()]
    if fields is None:
        names = numeric
    else:
        names = list(fields)
        for name in names:
            if name not in numeric:
                raise OPEInputError(
                    f"--context-fields {','.join(names)}: {name!r} is not a numeric field of "
                    f"the contexts in {root} (numeric fields: {', '.join(numeric) or 'none'})")
    if not names:
        return np.zeros((len(context), 0)), ()
    values = found.select(pl.col(n).cast(pl.Float64).fill_null(0.0) for n in names).to_numpy()
    return values, tuple(names)


def read_log_store(root: str | os.PathLike[str], context_fields: Sequence[str] | None = None
                   ) -> SlateLog:
    """Every shown slot of a parquet log store (:func:`ingest.joins.join_log`): reward 1 where
    it was clicked, its logged propensity, and as user features the numeric fields of its
    impression's ``context`` (``context_fields``, or every numeric one). The store's events
    passed the stream's contract when they were written, so no row is rejected here."""
    from ingest.joins import join_log

    if not Path(root).is_dir():
        raise OPEInputError(f"{root}: not a log store folder")
    rows = join_log(root).collect()
    if not rows.height:
        raise OPEInputError(f"{root}: the log store holds no impression")
    slate, first = _slates(rows["request_id"].to_list())
    contexts = rows["context"].gather(first)
    user, names = _context_features(rows["context"], context_fields, root)
    action, items = _indexed(rows["item_id"].to_list())
    return SlateLog(rows["clicked"].cast(pl.Float64).to_numpy(), action,
                    rows["position"].to_numpy().astype(np.int64) - 1,
                    rows["propensity"].to_numpy().astype(np.float64), slate, items,
                    _standardized(user), names, tuple(contexts.to_list()))


def read_item_features(path: str | os.PathLike[str], item_ids: Sequence[str]) -> np.ndarray:
    """(len(item_ids), di) numeric features of the items ``item_ids``, in that order, from a
    CSV or parquet file of ``item_id`` (text) and numeric columns (others are left out); an
    item the file lacks is an :class:`OPEInputError`. Standardized column by column."""
    from ingest.adapters import reading

    with reading(path, "item features file"):
        frame = (pl.read_parquet(path) if str(path).lower().endswith(".parquet") else
                 pl.read_csv(path, infer_schema_length=None,
                             schema_overrides={"item_id": pl.String}))
    if "item_id" not in frame.columns:
        raise OPEInputError(f"{path}: no item_id column; columns are {frame.columns}")
    frame = frame.with_columns(pl.col("item_id").cast(pl.String))
    # An unnamed first column is a row index (pandas writes one), not a feature.
    numeric = [c for c in frame.columns if c not in ("item_id", "", "column_1")
               and frame.schema[c].is_numeric()]
    if (repeated := frame.filter(pl.col("item_id").is_duplicated())).height:
        raise OPEInputError(f"{path}: item_id {repeated['item_id'][0]!r} is listed twice")
    known = dict(zip(frame["item_id"].to_list(), range(frame.height), strict=True))
    if missing := [i for i in item_ids if i not in known]:
        raise OPEInputError(f"{path}: no row for {len(missing)} item(s) of the log or the "
                            f"policy, e.g. {missing[:3]}")
    values = frame.select(numeric).cast(pl.Float64).to_numpy()[[known[i] for i in item_ids]]
    if not np.isfinite(values).all():
        row, col = (int(v) for v in np.argwhere(~np.isfinite(values))[0])
        raise OPEInputError(f"{path}: item {item_ids[row]!r}, column {numeric[col]!r} is not a "
                            "finite number")
    return _standardized(values)


def read_policy_table(path: str | os.PathLike[str]) -> pl.DataFrame:
    """An evaluation policy in long format: columns ``item_id`` (text), ``position``
    (1-based) and ``probability`` (>= 0), one row per (item, position) it may show; what it
    does not list has probability 0. A bad or repeated row is an :class:`OPEInputError`
    naming its line: a policy with a row left out would be another policy."""
    from ingest.adapters import SOURCE_LINE, cast_columns, read_table
    from ingest.validation import LINE

    table, unreadable = read_table(path, {})
    if missing := [c for c in ("item_id", "position", "probability") if c not in table.columns]:
        raise OPEInputError(f"{path}: no column {', '.join(missing)}; an evaluation policy "
                            "needs item_id,position,probability")
    kinds = {"item_id": ("item_id", "id"), "position": ("position", "integer"),
             "probability": ("probability", "number")}
    rows, bad = cast_columns(table.select(SOURCE_LINE, *kinds), kinds, required=list(kinds))
    if bad or unreadable:
        first = min([*bad, *unreadable], key=lambda r: r.line)
        raise OPEInputError(f"{path}: line {first.line}: {first.reason}")
    checks = [(pl.col("item_id") == "", "item_id is empty"),
              (pl.col("position") < 1, "position must be >= 1"),
              (~(pl.col("probability") >= 0) | ~pl.col("probability").is_finite(),
               "probability must be a finite number >= 0"),
              (~pl.struct("item_id", "position").is_first_distinct(),
               "this (item_id, position) is listed on an earlier line too")]
    for mask, reason in checks:
        if (found := rows.filter(mask)).height:
            line, item, position, probability = found.select(
                LINE, "item_id", "position", "probability").row(0)
            raise OPEInputError(f"{path}: line {line} (item_id={item!r}, position={position}, "
                                f"probability={probability}): {reason}")
    if not rows.height:
        raise OPEInputError(f"{path}: the evaluation policy lists no row")
    return rows.select("item_id", "position", "probability")


def policy_matrix(table: pl.DataFrame, item_ids: Sequence[str], n_positions: int,
                  source: object = "the evaluation policy") -> np.ndarray:
    """:func:`read_policy_table`'s table as (len(item_ids), n_positions) probabilities, items
    in ``item_ids``' order. Each position's probabilities must sum to 1 within
    :data:`SUM_TOLERANCE`; an error names the first that does not, and its sum."""
    index = {item: n for n, item in enumerate(item_ids)}
    if unknown := [i for i in table["item_id"].to_list() if i not in index]:
        raise OPEInputError(f"{source}: item_id {unknown[0]!r} is not among the items "
                            f"{list(item_ids)[:5]}...")
    if (deepest := int(table["position"].max())) > n_positions:
        raise OPEInputError(f"{source}: position {deepest} is deeper than the {n_positions} "
                            "positions evaluated")
    dist = np.zeros((len(item_ids), n_positions))
    dist[[index[i] for i in table["item_id"].to_list()],
         table["position"].to_numpy().astype(np.int64) - 1] = table["probability"].to_numpy()
    sums = dist.sum(axis=0)
    if (off := np.flatnonzero(np.abs(sums - 1.0) > SUM_TOLERANCE)).size:
        p = int(off[0])
        raise OPEInputError(f"{source}: the probabilities of position {p + 1} sum to "
                            f"{sums[p]:.9g}; each position's must sum to 1 (within "
                            f"{SUM_TOLERANCE:g})")
    return dist

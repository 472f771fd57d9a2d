"""The event contract checked on columns: the same rules as :mod:`ingest.events`, vectorized.

Messages from the stream are validated one by one by msgspec, which is the fastest way to
parse JSON. Logs that are already columnar (a parquet store, a CSV, the Open Bandit Dataset)
are validated here instead, a whole frame at a time in polars, without building an object
per event. Limits and rule texts come from :mod:`ingest.events`, so both paths enforce one
contract and word their errors alike (``slots[0].propensity=1.7 must be in (0, 1]``).
"""

from __future__ import annotations

import polars as pl

from ingest.events import (
    FIELD_RULES,
    MAX_ID_CHARS,
    MAX_POSITION,
    MAX_QUERY_CHARS,
    MAX_QUOTED_CHARS,
    MAX_SLOTS,
    REACTIONS,
)
from ingest.frames import SCHEMAS, EventFrames, LogBatch, RejectedRow, frame_messages

#: The column a columnar source adds to its frames: the source line each event came from.
LINE = "line"

_ID_FIELDS = {
    "impression": ("event_id", "user_id", "request_id", "policy"),
    "click": ("event_id", "user_id", "request_id", "item_id"),
    "reaction": ("event_id", "user_id", "request_id", "item_id"),
    "dwell": ("event_id", "user_id", "request_id", "item_id"),
    "query": ("event_id", "user_id", "request_id"),
}


def _required(field: str) -> pl.Expr:
    return pl.when(pl.col(field).is_null()).then(
        pl.lit(f"{field} is required ({FIELD_RULES[field]})"))


def _name(field: str, label: pl.Expr | None) -> pl.Expr:
    """How a reason names the value: the field, or a computed path such as ``slots[2].x``."""
    return pl.lit(field) if label is None else label


def _text(field: str, value: pl.Expr, max_chars: int, label: pl.Expr | None = None
          ) -> pl.Expr:
    length = value.str.len_chars()
    shown = pl.when(length > MAX_QUOTED_CHARS).then(pl.format(
        "{}… ({} chars)", value.str.head(MAX_QUOTED_CHARS), length)).otherwise(value)
    return pl.when((length < 1) | (length > max_chars)).then(
        pl.format("{}='{}' " + FIELD_RULES[field], _name(field, label), shown))


def _number(field: str, value: pl.Expr, ok: pl.Expr, label: pl.Expr | None = None
            ) -> pl.Expr:
    finite = value.cast(pl.Float64).is_finite()
    return pl.when(~(ok & finite)).then(
        pl.format("{}={} " + FIELD_RULES[field], _name(field, label), value))


def _slot_reasons(frame: pl.DataFrame) -> pl.DataFrame:
    """``row`` and ``slot_reason``: the first broken rule among each impression's slots,
    e.g. ``slots[2].position=0 ...`` or ``slots.item_id=[a, a] must not repeat``.

    Slots are exploded to flat columns and tested there with boolean masks; messages are
    formatted only for the rows that fail (string building is what costs)."""
    flat = (
        frame.select("row", "slots", _i=pl.int_ranges(pl.col("slots").list.len()))
        .explode("slots", "_i")
        .unnest("slots")
    )
    item, position = pl.col("item_id"), pl.col("position")
    score, propensity = pl.col("score"), pl.col("propensity")
    length = item.str.len_chars()
    slot_ok = (
        (length >= 1) & (length <= MAX_ID_CHARS)
        & (position >= 1) & (position <= MAX_POSITION)
        & score.is_finite()
        & (propensity > 0) & (propensity <= 1) & propensity.is_finite()
    ).fill_null(False)
    unique = flat.group_by("row").agg(
        _positions_ok=position.n_unique() == pl.len(), _items_ok=item.n_unique() == pl.len())
    suspects = unique.filter(~(pl.col("_positions_ok") & pl.col("_items_ok")))["row"]
    bad = flat.filter(~slot_ok | pl.col("row").is_in(suspects.implode()))
    if not bad.height:
        return pl.DataFrame(schema={"row": pl.UInt32, "slot_reason": pl.String})

    def at(field: str) -> pl.Expr:
        return pl.format("slots[{}].{}", pl.col("_i"), pl.lit(field))

    per_slot = pl.coalesce(
        pl.when(item.is_null()).then(pl.format("{} is required", at("item_id"))),
        _text("item_id", item, MAX_ID_CHARS, at("item_id")),
        pl.when(position.is_null()).then(pl.format("{} is required", at("position"))),
        _number("position", position, (position >= 1) & (position <= MAX_POSITION),
                at("position")),
        pl.when(score.is_null()).then(pl.format("{} is required", at("score"))),
        _number("score", score, pl.lit(True), at("score")),
        pl.when(propensity.is_null()).then(pl.format("{} is required", at("propensity"))),
        _number("propensity", propensity, (propensity > 0) & (propensity <= 1),
                at("propensity")),
    )

    def repeats(field: str) -> pl.Expr:
        shown = pl.col(field).cast(pl.String).sort().str.join(", ").str.head(MAX_QUOTED_CHARS)
        return pl.when(pl.col(field).n_unique() != pl.len()).then(
            pl.format("slots.{}=[{}] must not repeat", pl.lit(field), shown))

    return (
        bad.with_columns(_reason=per_slot)
        .group_by("row")
        .agg(slot_reason=pl.coalesce(pl.col("_reason").drop_nulls().first(),
                                     repeats("position"), repeats("item_id")))
        .filter(pl.col("slot_reason").is_not_null())
    )


def _checks(kind: str) -> list[pl.Expr]:
    checks: list[pl.Expr] = []
    for field in _ID_FIELDS[kind]:
        checks += [_required(field), _text(field, pl.col(field), MAX_ID_CHARS)]
    checks += [_required("ts"), _number("ts", pl.col("ts"), pl.col("ts") >= 0)]
    if kind == "impression":
        count = pl.col("slots").list.len()
        checks += [
            _required("slots"),
            pl.when((count < 1) | (count > MAX_SLOTS)).then(
                pl.format("slots=<{} slots> " + FIELD_RULES["slots"], count)),
            pl.col("slot_reason"),
        ]
    elif kind == "click":
        position = pl.col("position")
        checks += [_required("position"),
                   _number("position", position,
                           (position >= 1) & (position <= MAX_POSITION))]
    elif kind == "reaction":
        checks += [_required("reaction"), pl.when(~pl.col("reaction").is_in(REACTIONS)).then(
            pl.format("reaction='{}' " + FIELD_RULES["reaction"], pl.col("reaction")))]
    elif kind == "dwell":
        checks += [_required("seconds"),
                   _number("seconds", pl.col("seconds"), pl.col("seconds") >= 0)]
    elif kind == "query":
        checks += [_required("query"), _text("query", pl.col("query"), MAX_QUERY_CHARS)]
    return checks


def validate_frame(kind: str, frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split ``frame`` into its valid rows and its rejected ones.

    The frame must have the type's columns (:data:`ingest.frames.SCHEMAS`). Rejected rows keep
    every column plus ``row`` (their index in ``frame``) and ``reason`` (the first rule they
    break, worded as the stream's decoder words it).
    """
    missing = [name for name in SCHEMAS[kind] if name not in frame.columns]
    if missing:
        raise ValueError(f"{kind} frame lacks columns {missing}")
    checked = frame.with_row_index("row")
    if kind == "impression":
        checked = checked.join(_slot_reasons(checked), on="row", how="left",
                               maintain_order="left")
    checked = checked.with_columns(reason=pl.coalesce(_checks(kind)))
    if kind == "impression":
        checked = checked.drop("slot_reason")
    valid = checked.filter(pl.col("reason").is_null()).drop("row", "reason")
    return valid, checked.filter(pl.col("reason").is_not_null())


def validate_batch(frames: EventFrames) -> LogBatch:
    """Validate the frames of a columnar source (adapters, a log store, the simulator) into
    a :class:`~ingest.frames.LogBatch`. A frame's :data:`LINE` column, where it has one,
    names its rejected rows (else their row number from 1) and is dropped."""
    valid: EventFrames = {}
    rejected: list[RejectedRow] = []
    read = 0
    for kind, frame in frames.items():
        if LINE not in frame.columns:
            frame = frame.with_row_index(LINE, 1)
        lines = frame[LINE]
        good, bad = validate_frame(kind, frame.drop(LINE))
        valid[kind] = good
        read += frame.height
        if bad.height:
            raws = frame_messages(kind, bad.drop("row", "reason"))["message"]
            rejected += [RejectedRow(lines[row], reason, raw) for row, reason, raw
                         in zip(bad["row"], bad["reason"], raws, strict=True)]
    rejected.sort(key=lambda r: r.line)
    return LogBatch(valid, read, rejected)

"""Adapters turn other click-log formats into batches of clickloop events, validated on whole
columns by the stream's rules (:mod:`ingest.validation`). A value that does not parse rejects
its row, with the reason; only a file that cannot be read at all raises :class:`LogError`."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from operator import attrgetter

import polars as pl

from ingest.events import MAX_QUOTED_CHARS
from ingest.frames import SCHEMAS, SLOT_FIELDS, LogBatch, RejectedRow
from ingest.validation import LINE, validate_batch

#: The readers' column of each row's line in the file, named so that no log's column clashes.
SOURCE_LINE = "\x00line"
#: What a value of each kind of column must be ("" for text, which any value is).
KINDS = {"id": "", "text": "", "timestamp": "a timestamp (epoch seconds or ISO 8601)",
         "integer": "a 32-bit integer", "number": "a number", "flag": "0/1 or true/false"}
_ISO_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f",
                "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d")


class LogError(ValueError):
    """A log that cannot be read at all; the message names the file and what is wrong."""


@contextmanager
def reading(path: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Raises :class:`LogError` where ``path`` (a ``what``) cannot be read."""
    try:
        yield
    except pl.exceptions.NoDataError as exc:
        raise LogError(f"{path}: the file is empty") from exc
    except (pl.exceptions.PolarsError, OSError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LogError(f"{path}: not a readable {what} ({detail})") from exc


def read_csv(path: str | os.PathLike[str]) -> pl.DataFrame:
    """Every column of a CSV file as text, so that a bad value rejects its row instead of
    failing the file, and :data:`SOURCE_LINE` (the header is line 1). Blank lines are
    dropped; an empty cell is ``""``, so that the contract words an empty id."""
    with reading(path, "CSV file"):
        frame = pl.read_csv(path, infer_schema=False, empty_string_is_null=False)
    return frame.with_columns(pl.int_range(2, pl.len() + 2).alias(SOURCE_LINE)) \
        .filter(~pl.all_horizontal(pl.exclude(SOURCE_LINE) == ""))


def column_label(column: str, field: str) -> str:
    """How a reason names a column: the log's own name, and ours where they differ."""
    return f"column {column!r}" + (f" ({field})" if field != column else "")


def _cast(value: pl.Expr, dtype: pl.DataType, kind: str) -> pl.Expr:
    """``value`` as the kind's type; null where it does not cast."""
    if kind in ("id", "text"):
        return value.cast(pl.String)
    if kind == "timestamp" and dtype in (pl.Datetime, pl.Date):
        return value.dt.epoch("us") / 1e6
    if kind == "flag" and dtype == pl.String:
        value = value.str.to_lowercase().replace({"true": "1", "false": "0"})
    number = value.cast(pl.Float64, strict=False)
    if kind == "timestamp" and dtype == pl.String:
        return pl.coalesce(number, *(value.str.to_datetime(f, time_zone="UTC", strict=False)
                                     .dt.epoch("us") / 1e6 for f in _ISO_FORMATS))
    if kind == "integer":
        # Through a float, so that 3 and "3.0" pass (JSON writers differ) but 2.5 does not.
        return pl.when(number == number.floor()).then(number).cast(pl.Int32, strict=False)
    return number > 0 if kind == "flag" else number


def cast_columns(table: pl.DataFrame, columns: Mapping[str, tuple[str, str]],
                 required: Collection[str]) -> tuple[pl.DataFrame, list[RejectedRow]]:
    """A reader's rows as ``columns`` (our field -> the log's column and its kind, see
    :data:`KINDS`), with :data:`~ingest.validation.LINE`. A row with a value that does not
    cast, or with none for a ``required`` field, is rejected with its line, a reason naming
    the column and the value, and the row as JSON."""
    rows = table.select(pl.col(SOURCE_LINE).alias(LINE),
                        *(pl.col(column).alias(name) for name, (column, _) in columns.items()))
    label = {name: column_label(column, name) for name, (column, _) in columns.items()}
    # "" is no value, except in an id: the contract's own check words an empty id.
    raw = {name: pl.col(name).replace("", None) if rows.schema[name] == pl.String and kind != "id"
           else pl.col(name) for name, (_, kind) in columns.items()}
    checks = [(raw[name].is_null(), pl.lit(f"{label[name]} is required")) for name in required]
    checks += [(raw[name].is_not_null() & pl.col(f"{name}\x00").is_null(),
                pl.concat_str(pl.lit(f"{label[name]}='"),
                              raw[name].cast(pl.String).str.head(MAX_QUOTED_CHARS),
                              pl.lit(f"' is not {KINDS[kind]}")))
               for name, (_, kind) in columns.items() if KINDS[kind]]
    checked = rows.with_columns(_cast(raw[name], rows.schema[name], kind).alias(f"{name}\x00")
                                for name, (_, kind) in columns.items())
    ok = ~pl.any_horizontal(mask for mask, _ in checks)
    # Reasons are built only for the failing rows: building strings is what costs.
    bad = checked.filter(~ok).select(
        LINE, pl.coalesce(pl.when(mask).then(reason) for mask, reason in checks),
        pl.struct(*columns).struct.json_encode())
    good = checked.filter(ok).select(LINE, *(pl.col(f"{name}\x00").alias(name) for name in columns))
    return good, [RejectedRow(*row) for row in bad.iter_rows()]


def impressions_with_clicks(rows: pl.DataFrame, rejected: list[RejectedRow], batch_rows: int,
                            click_id: pl.Expr) -> Iterator[LogBatch]:
    """Slot rows (one per shown item, with the impression's fields, the slot's, ``clicked``
    and :data:`~ingest.validation.LINE`) as validated batches of ``batch_rows`` impressions in
    time order, each with the clicks (``click_id``) on its requests; one empty batch if there
    are none. ``rejected`` goes with the first batch, so that ``read = valid + rejected``."""
    slot = pl.struct(*(pl.col(f).cast(t) for f, t in SLOT_FIELDS.items()))
    impressions = (
        rows.group_by("request_id", maintain_order=True)
        .agg(pl.col(LINE, "ts").min(), pl.col("user_id", "policy", "query", "context").first(),
             slots=slot.sort_by("position"))
        .with_columns(event_id=pl.col("request_id") + "-imp",
                      experiment=pl.lit(None, pl.String), variant=pl.lit(None, pl.String))
        .sort("ts", maintain_order=True)
        .select(LINE, *SCHEMAS["impression"])
        .cast(SCHEMAS["impression"])  # type: ignore[arg-type]
    )
    clicks = (rows.filter("clicked").with_columns(event_id=click_id)
              .select(LINE, *SCHEMAS["click"]).cast(SCHEMAS["click"]))  # type: ignore[arg-type]
    for start in range(0, max(impressions.height, 1), batch_rows):
        part = impressions.slice(start, batch_rows)
        batch = validate_batch(
            {"impression": part, "click": clicks.join(part, on="request_id", how="semi")})
        if start == 0:
            batch.read += len(rejected)
            batch.rejected = sorted([*rejected, *batch.rejected], key=attrgetter("line"))
        yield batch

"""Adapters turn other click-log formats into batches of clickloop events, validated on whole
columns by the stream's rules (:mod:`ingest.validation`); a bad row is rejected with its reason."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress

import msgspec
import polars as pl

from ingest.codec import TOO_DEEP
from ingest.events import MAX_QUOTED_CHARS, quoted
from ingest.frames import SCHEMAS, SLOT_FIELDS, LogBatch, RejectedRow
from ingest.validation import LINE, validate_batch

#: The readers' column of each row's line in the file, named so that no log's column clashes.
SOURCE_LINE = "\x00line"
#: What a value of each kind of column must be ("" for text, which any value is).
KINDS = {"id": "", "text": "", "timestamp": "a timestamp (epoch seconds or ISO 8601)",
         "integer": "a 32-bit integer", "number": "a number", "flag": "0/1 or true/false"}
_ISO_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f",
                "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d")
RowsAndRejects = tuple[pl.DataFrame, list[RejectedRow]]


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
    """Every column of a CSV file as text (an empty cell as ``""``, so that the contract words an
    empty id) and :data:`SOURCE_LINE` (the header is line 1); blank lines are dropped."""
    with reading(path, "CSV file"):
        frame = pl.read_csv(path, infer_schema=False, empty_string_is_null=False)
    return frame.with_columns(pl.int_range(2, pl.len() + 2).alias(SOURCE_LINE)) \
        .filter(~pl.all_horizontal(pl.exclude(SOURCE_LINE) == ""))


def read_table(path: str | os.PathLike[str], scalars: Mapping[str, str]) -> RowsAndRejects:
    """A CSV, JSON-lines or parquet log's rows with :data:`SOURCE_LINE`, and the JSON lines that
    cannot be rows: not objects, or with an object or a list in a ``scalars`` column (-> field)."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".csv":
        return read_csv(path), []
    if suffix == ".parquet":
        with reading(path, "parquet file"):
            table = pl.read_parquet(path).with_row_index(SOURCE_LINE, 1)
        if nested := [c for c in scalars if c in table.columns and table.schema[c].is_nested()]:
            raise LogError(f"{path}: {column_label(nested[0], scalars[nested[0]])} holds lists or "
                           "objects, not single values")
        return table, []
    if suffix not in (".jsonl", ".ndjson", ".json"):
        raise LogError(f"{path}: unknown log format {suffix!r} (use .csv, .jsonl or .parquet)")
    with reading(path, "JSON-lines file"), open(path, "rb") as file:
        data = file.read().rstrip()
    if not data:
        raise LogError(f"{path}: the file is empty")
    # Where polars fails, skips blank lines or reads objects as text, lines are read one by one.
    with suppress(pl.exceptions.PolarsError):
        frame = pl.read_ndjson(data)
        if data.count(b"\n") + 1 == frame.height and not any(
                s.dtype.is_nested() or s.dtype == pl.String and s.str.contains(r"^[\[{]").any()
                for s in frame.select(c for c in scalars if c in frame.columns)):
            return frame.with_row_index(SOURCE_LINE, 1), []
    good: dict[int, bytes] = {}
    keys: dict[str, None] = {}
    rejected: list[RejectedRow] = []
    for number, line in enumerate(data.split(b"\n"), 1):
        if line.strip():
            try:
                keys.update(dict.fromkeys(_json_row(line, scalars)))
                good[number] = line
            except ValueError as exc:
                rejected.append(RejectedRow(number, str(exc), line.decode(errors="replace")))
    # Every value as text, as in a CSV: the good lines' types may still differ line to line.
    schema = dict.fromkeys(keys or scalars, pl.String)
    with reading(path, "JSON-lines file"):
        frame = pl.read_ndjson(b"\n".join(good.values()), schema=schema)
    return frame.with_columns(pl.Series(SOURCE_LINE, list(good), pl.Int64)), rejected


def _json_row(line: bytes, scalars: Mapping[str, str]) -> dict[str, object]:
    """A JSON line as a row; else :class:`ValueError` saying why it cannot be one."""
    try:
        value = msgspec.json.decode(line)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise ValueError(TOO_DEEP) from None
    if not isinstance(value, dict):
        raise ValueError(f"not a JSON object: {quoted(value)}")
    for column, field in scalars.items():
        if isinstance(value.get(column), dict | list):
            raise ValueError(f"{column_label(column, field)}={quoted(value[column])} must be a "
                             "single value, not an object or a list")
    return value


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
                 required: Collection[str], request: Sequence[str] = ()) -> RowsAndRejects:
    """A reader's rows as ``columns`` (our field -> the log's column and its kind, see
    :data:`KINDS`), with ``LINE`` and, from the ``request`` fields joined by ``@``, ``request_id``.
    A row with a value that does not cast, or none for a ``required`` or ``request`` field, is
    rejected with its line, a reason and the row as JSON, and so is every row of its request."""
    rows = table.select(pl.col(SOURCE_LINE).alias(LINE), *(
        pl.col(column).alias(f"{name}\x00") for name, (column, _) in columns.items()))
    raw = {name: pl.col(f"{name}\x00") for name in columns}
    # "" is no value, except in an id: the contract's own check words an empty id.
    raw |= {name: raw[name].replace("", None) for name, (_, kind) in columns.items()
            if kind != "id" and rows.schema[f"{name}\x00"] == pl.String}
    checks = [(raw[name].is_null(), pl.lit(f"{column_label(columns[name][0], name)} is required"))
              for name in dict.fromkeys([*required, *request])]
    checks += [(raw[name].is_not_null() & pl.col(name).is_null(),
                pl.concat_str(pl.lit(f"{column_label(column, name)}='"),
                              raw[name].cast(pl.String).str.head(MAX_QUOTED_CHARS),
                              pl.lit(f"' is not {KINDS[kind]}")))
               for name, (column, kind) in columns.items() if KINDS[kind]]
    checked = rows.with_columns(_cast(raw[name], rows.schema[f"{name}\x00"], kind).alias(name)
                                for name, (_, kind) in columns.items())
    if request:
        # A row whose ts did not parse has no request_id: it is in no request, and goes alone.
        checked = checked.with_columns(request_id=pl.concat_str(request, separator="@"))
        ids, lines = (checked.filter(pl.any_horizontal(mask for mask, _ in checks))
                      .group_by("request_id").agg(pl.col(LINE).min()).drop_nulls().get_columns())
        checks.append((pl.col("request_id").is_in(ids.implode()), pl.format(
            "request_id='{}' is rejected whole: its row at line {} was rejected",
            pl.col("request_id").str.head(MAX_QUOTED_CHARS),
            pl.col("request_id").replace_strict(ids, lines, default=None))))
    ok = ~pl.any_horizontal(mask for mask, _ in checks)
    # Reasons are built only for the failing rows: building strings is what costs.
    bad = checked.filter(~ok).select(
        LINE, pl.coalesce(pl.when(mask).then(reason) for mask, reason in checks),
        pl.struct(pl.col(f"{name}\x00").alias(name) for name in columns).struct.json_encode())
    good = checked.filter(ok).drop(f"{name}\x00" for name in columns)
    return good, [RejectedRow(*row) for row in bad.iter_rows()]


def impressions_with_clicks(rows: pl.DataFrame, rejected: list[RejectedRow], batch_rows: int,
                            click_id: pl.Expr) -> Iterator[LogBatch]:
    """Slot rows (one per shown item) as validated batches of ``batch_rows`` impressions in time
    order with their clicks (``click_id``); the first, yielded even if empty, holds ``rejected``."""
    impressions = (
        rows.group_by("request_id", maintain_order=True)
        .agg(pl.col(LINE, "ts").min(), pl.col("user_id", "policy", "query", "context").first(),
             slots=pl.struct(*SLOT_FIELDS).sort_by("position"))
        .with_columns(event_id=pl.col("request_id") + "-imp", experiment=None, variant=None)
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
            batch.rejected = sorted([*rejected, *batch.rejected], key=lambda row: row.line)
        yield batch

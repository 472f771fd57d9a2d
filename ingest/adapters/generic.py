"""A generic click log (CSV, JSON lines or parquet), one row per shown slot, as events.

``mapping`` names the log's column for each field of ours that it calls otherwise. Required:
``user_id``, ``item_id``, ``position`` (1 = top), ``ts`` (epoch seconds, ISO 8601 or a datetime)
and ``clicked`` (0/1 or true/false). Optional: ``request_id`` (groups slots into one impression;
else ``user_id@ts``), ``propensity`` (the logging policy's probability of the slot), ``score``,
``query`` and ``policy`` (else the ``policy`` argument). Without a propensity no estimator
downstream can be unbiased, so the adapter refuses unless ``assume_deterministic=True`` says
the logging policy was deterministic (every propensity is then 1).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import msgspec
import numpy as np
import polars as pl

from ingest.adapters import (
    SOURCE_LINE,
    LogError,
    cast_columns,
    column_label,
    impressions_with_clicks,
    read_csv,
    reading,
)
from ingest.events import MAX_QUOTED_CHARS
from ingest.frames import LogBatch, RejectedRow

#: The kind of each field (:data:`ingest.adapters.KINDS`), required or not.
REQUIRED = {"user_id": "id", "item_id": "id", "position": "integer", "ts": "timestamp",
            "clicked": "flag"}
OPTIONAL = {"request_id": "id", "propensity": "number", "score": "number", "query": "text",
            "policy": "id"}


class MappingError(LogError):
    """The column mapping does not fit the log."""


def _read_json_lines(path: Path, scalars: Mapping[str, str]
                     ) -> tuple[pl.DataFrame, list[RejectedRow]]:
    """The rows of a JSON-lines log, and the lines that cannot be rows: not a JSON object, or
    with an object or a list in one of the columns ``scalars`` (column -> our field)."""
    with reading(path, "JSON-lines file"):
        data = path.read_bytes()
    if not data or data.isspace():
        raise LogError(f"{path}: the file is empty")
    try:
        frame = pl.read_ndjson(data)
        lines = np.arange(1, frame.height + 1)
        if data.count(b"\n") + (not data.endswith(b"\n")) != frame.height:
            # polars skips blank lines: number the others as the file does.
            lines = np.flatnonzero(list(map(len, map(bytes.strip, data.split(b"\n"))))) + 1
        # polars reads an object or a list as text in a column of text: such a line is worded
        # below, with the lines that polars cannot read.
        if len(lines) == frame.height and not any(
                s.dtype.is_nested() or s.dtype == pl.String and s.str.contains(r"^[\[{]").any()
                for s in frame.select(c for c in scalars if c in frame.columns)):
            return frame.with_columns(pl.Series(SOURCE_LINE, lines, pl.Int64)), []
    except pl.exceptions.PolarsError:
        pass
    good: dict[int, bytes] = {}
    keys: dict[str, None] = {}
    rejected: list[RejectedRow] = []
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            value = msgspec.json.decode(line)
            reason = _not_a_row(value, scalars)
        except msgspec.DecodeError as exc:
            reason = f"not JSON ({exc})"
        except RecursionError:
            reason = "not JSON that can be read: nesting too deep"
        if reason:
            rejected.append(RejectedRow(number, reason, line.decode(errors="replace")))
        else:
            good[number] = line
            keys.update(dict.fromkeys(value))
    # Every value as text, as in a CSV: the good lines' types may still differ line to line.
    schema = dict.fromkeys(keys or scalars, pl.String)
    with reading(path, "JSON-lines file"):
        frame = pl.read_ndjson(b"\n".join(good.values()), schema=schema) if good \
            else pl.DataFrame(schema=schema)
    return frame.with_columns(pl.Series(SOURCE_LINE, list(good), pl.Int64)), rejected


def _not_a_row(value: object, scalars: Mapping[str, str]) -> str | None:
    """Why a decoded JSON line cannot be a row, if it cannot."""
    if not isinstance(value, dict):
        return f"not a JSON object: {_shown(value)}"
    for column, field in scalars.items():
        if isinstance(value.get(column), dict | list):
            return (f"{column_label(column, field)}={_shown(value[column])} must be a single "
                    "value, not an object or a list")
    return None


def _shown(value: object) -> str:
    return msgspec.json.encode(value)[:MAX_QUOTED_CHARS].decode(errors="replace")


def generic_frames(
    path: str | os.PathLike[str],
    mapping: Mapping[str, str] | None = None,
    *,
    policy: str = "logged",
    assume_deterministic: bool = False,
    batch_rows: int = 500_000,
) -> Iterator[LogBatch]:
    """Validated batches of impressions (in time order, ``batch_rows`` at a time) with their
    clicks; the first batch also holds the rows that could not be read."""
    mapping, kinds = mapping or {}, REQUIRED | OPTIONAL
    if unknown := set(mapping) - set(kinds):
        raise MappingError(f"mapping names unknown fields {sorted(unknown)}; "
                           f"known: {', '.join(kinds)}")
    source = {field: mapping.get(field, field) for field in kinds}
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        table, rejected = _read_json_lines(path, {column: f for f, column in source.items()})
    elif suffix == ".csv":
        table, rejected = read_csv(path), []
    elif suffix == ".parquet":
        with reading(path, "parquet file"):
            table, rejected = pl.read_parquet(path), []
        table = table.with_columns(pl.int_range(1, pl.len() + 1).alias(SOURCE_LINE))
    else:
        raise MappingError(f"{path}: unknown log format {suffix!r} (use .csv, .jsonl or .parquet)")
    columns = [c for c in table.columns if c != SOURCE_LINE]
    if missing := [f"{f} (column {source[f]!r})" for f in REQUIRED if source[f] not in columns]:
        raise MappingError(f"{path}: no column for {', '.join(missing)}; columns are "
                           f"{columns}; map them with field=column")
    fields = [f for f in kinds if f in REQUIRED or source[f] in columns]
    if "propensity" not in fields and not assume_deterministic:
        raise MappingError(f"{path}: no propensity column ({source['propensity']!r}). Map the "
                           "logging policy's propensity, or pass assume_deterministic=True "
                           "(--deterministic) if the logged ranking was deterministic.")
    if nested := [f for f in fields if table.schema[source[f]].is_nested()]:
        raise LogError(f"{path}: {column_label(source[nested[0]], nested[0])} holds lists or "
                       "objects, not single values")
    rows, bad = cast_columns(table, {f: (source[f], kinds[f]) for f in fields},
                             required=[f for f in fields if f in REQUIRED or f == "request_id"])
    defaults = {"propensity": pl.lit(1.0), "score": pl.lit(0.0), "policy": pl.lit(policy),
                "query": pl.lit(None, pl.String), "context": pl.lit(None, pl.String),
                "request_id": pl.col("user_id") + "@" + pl.col("ts").cast(pl.String)}
    rows = rows.with_columns(**{f: v for f, v in defaults.items() if f not in rows.columns})
    yield from impressions_with_clicks(
        rows, rejected + bad, batch_rows,
        click_id=pl.col("request_id") + "-click-" + pl.col("position").cast(pl.String))

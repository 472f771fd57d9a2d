"""Reading a catalog file: ``item_id``, ``title`` and any numeric item feature columns.

Every cell is read as text first, so an id such as ``007`` stays ``007``. A row the reader
cannot use is rejected with its row number (data rows counted from 1, as in the file) and
column, and the other rows are kept: a line with the wrong number of fields, text that is not
UTF-8, an empty or repeated ``item_id``, an empty ``title`` when titles are required, a
feature value that is not a number.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import polars as pl

#: Rejected rows printed by :func:`report_rejected`; the rest are counted.
SHOWN_REJECTS = 5


class CatalogError(ValueError):
    """A catalog the command cannot use; the message names the file and the problem."""


def _read_table(path: str) -> tuple[pl.DataFrame, list[tuple[int, str, str]]]:
    """Every column as text, and the lines rejected while reading: (row, column, reason)."""
    if path.endswith(".parquet"):
        try:
            table = pl.read_parquet(path)
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise CatalogError(f"--items {path}: cannot read it ({exc})") from None
        return table.with_columns(pl.all().cast(pl.String)), []
    try:
        text = Path(path).read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise CatalogError(f"--items {path}: cannot read it ({exc})") from None
    lines = csv.reader(io.StringIO(text, newline=""))
    header = next(lines, None)
    if not header:
        raise CatalogError(f"--items {path} is empty: it needs a header line with item_id and "
                           "title")
    rows, rejected = [], []
    for row_number, fields in enumerate(lines, start=1):
        if not fields:
            continue
        if len(fields) != len(header):
            rejected.append((row_number, header[min(len(fields), len(header)) - 1],
                             f"{len(fields)} fields, the header has {len(header)}"))
            continue
        rows.append([row_number, *fields])
    table = pl.DataFrame(rows, schema=["__row", *header], orient="row")
    return table, rejected


def read_items(path: str, feature_columns: Sequence[str] = (), *, require_title: bool = False
               ) -> tuple[pl.DataFrame, list[str]]:
    """The catalog at ``path`` (CSV, or parquet by its suffix): ``item_id`` and ``title`` as
    strings (a missing title is empty) and the ``feature_columns`` as floats, and the rows it
    rejected, each as ``row N, column C: reason`` (see the module doc). A file that cannot be
    read, or lacks a column, is a :class:`CatalogError`."""
    table, problems = _read_table(path)
    if "__row" not in table.columns:
        table = table.with_row_index("__row", offset=1)
    for column in ("item_id", "title", *feature_columns):
        if column not in table.columns:
            raise CatalogError(f"--items {path} has no column {column!r} (it has "
                               f"{', '.join(c for c in table.columns if c != '__row')})")
    table = table.with_columns(pl.col("item_id").str.strip_chars(),
                               pl.col("title").fill_null(""))
    bad = pl.lit(None, dtype=pl.String)
    checks = [("item_id", pl.col("item_id").is_null() | (pl.col("item_id") == ""), "empty"),
              ("item_id", pl.col("item_id").str.contains("\ufffd"), "not UTF-8 text"),
              ("title", pl.col("title").str.contains("\ufffd"), "not UTF-8 text")]
    if require_title:
        checks.append(("title", pl.col("title").str.strip_chars() == "", "empty"))
    for column in feature_columns:
        value = pl.col(column).str.strip_chars().cast(pl.Float64, strict=False)
        checks.append((column, value.is_null() | ~value.is_finite(), "not a number"))
    for column, failed, reason in checks:
        bad = pl.when(bad.is_null() & failed).then(pl.lit(f"{column}\t{reason}")).otherwise(bad)
    table = table.with_columns(__problem=bad)
    for row, problem in table.filter(pl.col("__problem").is_not_null()).select(
            "__row", "__problem").iter_rows():
        column, reason = problem.split("\t")
        problems.append((row, column, reason))
    good = table.filter(pl.col("__problem").is_null())
    repeat = good.filter(pl.col("item_id").is_duplicated() & ~pl.col("item_id").is_first_distinct())
    problems += [(row, "item_id", f"{item!r} repeats an earlier row")
                 for row, item in repeat.select("__row", "item_id").iter_rows()]
    good = good.filter(~pl.col("__row").is_in(repeat["__row"].implode()))
    items = good.select("item_id", "title", *(pl.col(c).str.strip_chars().cast(pl.Float64)
                                              for c in feature_columns))
    rejected = [f"row {row}, column {column!r}: {reason}" for row, column, reason in
                sorted(problems)]
    return items, rejected


def report_rejected(path: str, rejected: Sequence[str], flag: str = "--items") -> None:
    """The rejected rows of the file given as ``flag`` on standard error: the first few,
    then how many more."""
    if not rejected:
        return
    print(f"{flag} {path}: {len(rejected):,} rows rejected", file=sys.stderr)
    for line in rejected[:SHOWN_REJECTS]:
        print(f"  {line}", file=sys.stderr)
    if len(rejected) > SHOWN_REJECTS:
        print(f"  ... and {len(rejected) - SHOWN_REJECTS:,} more", file=sys.stderr)


def load_catalog(path: str, feature_columns: Sequence[str] = (), *,
                 require_title: bool = False) -> pl.DataFrame:
    """:func:`read_items`, its rejected rows reported on standard error; a catalog left
    without a usable row is a :class:`CatalogError`."""
    items, rejected = read_items(path, feature_columns, require_title=require_title)
    report_rejected(path, rejected)
    if not items.height:
        raise CatalogError(f"--items {path} holds no usable row")
    return items

"""Reading a catalog file: ``item_id``, ``title`` and any numeric item feature columns."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl


class CatalogError(ValueError):
    """A catalog the command cannot use; the message names the file and the problem."""


def read_items(path: str, feature_columns: Sequence[str] = ()
               ) -> tuple[pl.DataFrame, list[str]]:
    """The catalog at ``path`` (CSV, or parquet by its suffix) with ``item_id`` and ``title``
    as strings (a missing title is empty) and the numeric ``feature_columns``, and the rows
    it rejected, each as ``row N, column C: reason`` (N counts data rows from 1). A row
    without an item id, or one repeating an earlier row's id, is rejected; the others are
    kept. A file that cannot be read, or lacks a column, is a :class:`CatalogError`."""
    try:
        items = (pl.read_parquet(path) if path.endswith(".parquet")
                 else pl.read_csv(path, infer_schema_length=None))
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise CatalogError(f"--items {path}: cannot read it ({exc})") from None
    for column in ("item_id", "title", *feature_columns):
        if column not in items.columns:
            raise CatalogError(f"--items {path} has no column {column!r} (it has "
                               f"{', '.join(items.columns)})")
    for column in feature_columns:
        if not items[column].dtype.is_numeric():
            raise CatalogError(f"--items {path}: column {column!r} is {items[column].dtype}, "
                               "not numeric")
    items = items.with_columns(pl.col("item_id").cast(pl.String),
                               pl.col("title").cast(pl.String).fill_null(""))
    ids = items["item_id"]
    empty = (ids.is_null() | (ids.str.strip_chars() == "")).to_numpy()
    repeat = ids.is_duplicated().to_numpy() & ~ids.is_first_distinct().to_numpy() & ~empty
    rejected = [f"row {row + 1}, column 'item_id': empty" for row in empty.nonzero()[0]]
    rejected += [f"row {row + 1}, column 'item_id': {ids[int(row)]!r} repeats an earlier row"
                 for row in repeat.nonzero()[0]]
    return items.filter(~(empty | repeat)), sorted(rejected, key=_row_number)


def _row_number(reason: str) -> int:
    return int(reason.split(",", 1)[0].removeprefix("row "))

"""Explicit ratings datasets with a train and a test file, as used to benchmark recommenders
learned from implicit feedback (e.g. Coat, Yahoo! R3: a self-selected training set and a
test set of randomly chosen items).

Two layouts of a dataset folder are read:

- **dense** (Coat's): ``train.ascii`` and ``test.ascii``, whitespace-separated matrices, row =
  user, column = item (both counted from 0), the cell the rating and 0 = unobserved;
- **triplets**: ``train.csv`` and ``test.csv`` with the header ``user,item,rating`` (in any
  column order), one rating a row, ids any integers.

:func:`read_ratings` returns a :class:`Ratings`: both splits as polars frames with columns
``user``, ``item`` (contiguous indices shared by the two splits: the sorted union of the ids
either split rates) and ``rating``, the original ids of each index, and the rows it
rejected. A bad row is rejected with its line, a reason naming the column and the value, and
the row as it was; the good rows are kept. A folder that holds neither layout, a missing
file, a file without the header, or a split with no rating left is a :class:`RatingsError`
naming the path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from ingest.events import MAX_QUOTED_CHARS
from ingest.frames import RejectedRow

Layout = Literal["dense", "triplets"]
#: The files of each layout: (train, test).
LAYOUTS: dict[Layout, tuple[str, str]] = {"dense": ("train.ascii", "test.ascii"),
                                          "triplets": ("train.csv", "test.csv")}
#: The triplet layout's columns.
COLUMNS = ("user", "item", "rating")
SCHEMA = {"user": pl.Int64, "item": pl.Int64, "rating": pl.Int64}
#: Bad cells a reason spells out before it only counts the rest.
_NAMED_CELLS = 3


class RatingsError(ValueError):
    """A ratings dataset that cannot be read at all; the message names the path."""


@dataclass(frozen=True)
class Split:
    """One file's ratings, before the ids become indices: ``frame`` has the original
    ``user``, ``item`` and ``rating``; ``rejected`` its bad rows."""

    frame: pl.DataFrame
    rejected: tuple[RejectedRow, ...]


@dataclass(frozen=True)
class Ratings:
    """A ratings dataset (see the module doc). ``train`` and ``test``: frames of ``user``,
    ``item`` (indices in ``[0, n_users)`` and ``[0, n_items)``) and ``rating``;
    ``user_ids[u]`` and ``item_ids[i]`` are the original ids of index u and i;
    ``rejected`` maps each file's name to its rejected rows."""

    name: str
    layout: Layout
    train: pl.DataFrame
    test: pl.DataFrame
    user_ids: np.ndarray
    item_ids: np.ndarray
    rejected: dict[str, tuple[RejectedRow, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            frame: pl.DataFrame = getattr(self, split)
            if frame.columns != list(COLUMNS):
                raise ValueError(f"{split}.columns={frame.columns} must be {list(COLUMNS)}")
            if frame.height == 0:
                raise ValueError(f"{split} has no ratings: a split must hold at least one")
            for column, ids in (("user", self.user_ids), ("item", self.item_ids)):
                low, high = frame[column].min(), frame[column].max()
                if low < 0 or high >= len(ids):  # type: ignore[operator]
                    raise ValueError(f"{split}.{column}=[{low}..{high}] must be indices in "
                                     f"[0, {len(ids)}), one per id of {column}_ids")

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


def read_ratings(folder: str | os.PathLike[str], name: str | None = None) -> Ratings:
    """The dataset in ``folder``, in whichever layout it holds (the dense one first);
    ``name`` defaults to the folder's name."""
    path = Path(folder)
    if not path.is_dir():
        raise RatingsError(f"{path}: no such folder")
    layout = _layout(path)
    reader = read_dense if layout == "dense" else read_triplets
    files = [path / file for file in LAYOUTS[layout]]
    train, test = (reader(file) for file in files)
    for file, split in zip(files, (train, test), strict=True):
        if split.frame.height == 0:
            raise RatingsError(f"{file}: no rating to use (rows rejected: "
                               f"{len(split.rejected)})")
    return index_ratings(name or path.resolve().name, layout, train, test,
                         {file.name: split.rejected for file, split in zip(files, (train, test),
                                                                           strict=True)})


def _layout(path: Path) -> Layout:
    for layout, files in LAYOUTS.items():
        present = [(path / file).is_file() for file in files]
        if all(present):
            return layout
        if any(present):
            missing = files[present.index(False)]
            raise RatingsError(f"{path / missing}: no such file (the {layout} layout needs "
                               f"{' and '.join(files)})")
    wanted = " or ".join(" and ".join(files) for files in LAYOUTS.values())
    raise RatingsError(f"{path}: no ratings dataset here (looked for {wanted})")


def index_ratings(name: str, layout: Layout, train: Split, test: Split,
                  rejected: dict[str, tuple[RejectedRow, ...]]) -> Ratings:
    """Both splits with ids turned into indices shared by the two: the sorted union of the
    ids each column holds in either split."""
    for split, what in ((train, "train"), (test, "test")):
        if split.frame.height == 0:
            raise RatingsError(f"{name}: the {what} split has no rating to use (rows "
                               f"rejected: {len(split.rejected)})")
    ids = {column: pl.concat([train.frame[column], test.frame[column]]).unique().sort()
           for column in ("user", "item")}

    def indexed(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns(
            pl.col(column).replace_strict(ids[column], pl.int_range(len(ids[column]),
                                                                     eager=True),
                                          return_dtype=pl.Int64)
            for column in ("user", "item")).select(COLUMNS)

    return Ratings(name, layout, indexed(train.frame), indexed(test.frame),
                   ids["user"].to_numpy(), ids["item"].to_numpy(), rejected)


def _lines(path: Path) -> pl.DataFrame:
    """The file's non-blank lines, ``line`` (1 = the first line of the file) and ``text``."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RatingsError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RatingsError(f"{path}: not a readable text file ({exc})") from None
    lines = pl.DataFrame({"text": text.splitlines()}, schema={"text": pl.String})
    return (lines.with_row_index("line", 1).with_columns(pl.col("line").cast(pl.Int64))
            .filter(pl.col("text").str.strip_chars() != ""))


def _integers(cells: pl.Expr) -> pl.Expr:
    """Text cells as integers, null where a cell is not one (``4``, ``-3`` and ``4.0`` pass,
    ``4.5`` and ``x`` do not). Integer text is read as such, exactly: through a float, ids
    past 2^53 would merge with their neighbours."""
    text = cells.str.strip_chars()
    number = text.cast(pl.Float64, strict=False)
    whole = pl.when(number == number.floor()).then(number).cast(pl.Int64, strict=False)
    return pl.coalesce(text.cast(pl.Int64, strict=False), whole)


def _quoted(value: pl.Expr) -> pl.Expr:
    return pl.lit("'") + value.str.head(MAX_QUOTED_CHARS) + pl.lit("'")


def read_dense(path: str | os.PathLike[str]) -> Split:
    """A dense matrix file (see the module doc): one row per observed (non-zero) cell.

    A line is rejected whole if its number of cells differs from the usual one (the most
    common, so one bad line cannot set it), or if a cell is not an integer >= 0: a line is a
    user's record, and one whose cells are shifted or garbled cannot say which item each of
    its other values belongs to. Its user keeps the index of its line."""
    path = Path(path)
    lines = _lines(path)
    if lines.height == 0:
        raise RatingsError(f"{path}: no ratings (the file is empty)")
    # Any run of whitespace separates two cells.
    cells = lines.with_columns(
        cells=pl.col("text").str.replace_all(r"\s+", " ").str.strip_chars().str.split(" "))
    width = int(cells["cells"].list.len().mode().sort()[-1])
    long = (cells.with_columns(user=pl.col("line") - 1, count=pl.col("cells").list.len())
            .explode("cells").with_columns(item=pl.int_range(pl.len()).over("line"),
                                           rating=_integers(pl.col("cells"))))
    bad_cells = (long.filter(pl.col("count") == width,
                             pl.col("rating").is_null() | (pl.col("rating") < 0))
                 .group_by("line").agg(
                     pl.len().alias("bad"),
                     pl.concat_str(pl.lit("column "), pl.col("item") + 1, pl.lit(" (item "),
                                   pl.col("item"), pl.lit(")="), _quoted(pl.col("cells")))
                     .head(_NAMED_CELLS).str.join(", ").alias("cells")))
    reasons = pl.concat([
        cells.filter(pl.col("cells").list.len() != width).select(
            "line", reason=pl.format("has {} cells; the matrix has {} per line",
                                     pl.col("cells").list.len(), pl.lit(width))),
        bad_cells.select("line", reason=pl.format(
            "{}{} not a rating (an integer >= 0; 0 = unobserved)", pl.col("cells"),
            pl.when(pl.col("bad") > _NAMED_CELLS)
            .then(pl.format(" and {} more cells are", pl.col("bad") - _NAMED_CELLS))
            .otherwise(pl.when(pl.col("bad") > 1).then(pl.lit(" are"))
                       .otherwise(pl.lit(" is")))))])
    rejected = _rejected(reasons, lines)
    frame = (long.join(reasons.select("line"), on="line", how="anti")
             .filter(pl.col("rating") > 0).select(COLUMNS).cast(SCHEMA))  # type: ignore[arg-type]
    return Split(frame, rejected)


def read_triplets(path: str | os.PathLike[str]) -> Split:
    """A ``user,item,rating`` CSV file (see the module doc). A row is rejected if it has
    another number of cells than the header, an id that is not an integer, a rating
    that is not an integer, or a (user, item) pair an earlier row rated."""
    path = Path(path)
    lines = _lines(path)
    if lines.height == 0:
        raise RatingsError(f"{path}: the file is empty (it needs the header "
                           f"{','.join(COLUMNS)})")
    header = [cell.strip().lower() for cell in lines["text"][0].split(",")]
    if sorted(header) != sorted(COLUMNS):
        raise RatingsError(f"{path}: line {lines['line'][0]} is not the header "
                           f"{','.join(COLUMNS)} (it is {lines['text'][0][:80]!r})")
    rows = lines.slice(1).with_columns(cells=pl.col("text").str.split(","))
    rows = rows.with_columns(count=pl.col("cells").list.len(), **{
        f"{column}\x00": pl.col("cells").list.get(header.index(column), null_on_oob=True)
        .str.strip_chars() for column in COLUMNS})
    rows = rows.with_columns(**{column: _integers(pl.col(f"{column}\x00")) for column in COLUMNS})
    checks = [(pl.col("count") != len(header),
               pl.format("has {} cells; the header has {}", pl.col("count"), pl.lit(len(header))))]
    for column in COLUMNS:
        rule = "an integer" if column == "rating" else "an integer id"
        bad = pl.col(column).is_null()
        checks.append((bad, pl.concat_str(pl.lit(f"column {column!r}="),
                                          _quoted(pl.col(f"{column}\x00")),
                                          pl.lit(f" is not {rule}"))))
    failing = pl.any_horizontal(mask for mask, _ in checks)
    rows = rows.with_columns(reason=pl.when(failing).then(
        pl.coalesce(pl.when(mask).then(reason) for mask, reason in checks)))
    # A pair rated twice keeps its first rating: the later rows are rejected.
    first = (rows.filter(pl.col("reason").is_null())
             .with_columns(first=pl.col("line").min().over("user", "item")))
    repeats = first.filter(pl.col("line") != pl.col("first")).select(
        "line", reason=pl.format("(user, item)=({}, {}) was rated at line {} already",
                                 pl.col("user"), pl.col("item"), pl.col("first")))
    reasons = pl.concat([rows.filter(pl.col("reason").is_not_null()).select("line", "reason"),
                         repeats])
    frame = (first.filter(pl.col("line") == pl.col("first")).select(COLUMNS)
             .cast(SCHEMA))  # type: ignore[arg-type]
    return Split(frame, _rejected(reasons, lines))


def _rejected(reasons: pl.DataFrame, lines: pl.DataFrame) -> tuple[RejectedRow, ...]:
    """The rejected lines in file order, each with its reason and text."""
    found = reasons.join(lines, on="line").sort("line")
    return tuple(RejectedRow(line, reason, text)
                 for line, reason, text in found.select("line", "reason", "text").iter_rows())

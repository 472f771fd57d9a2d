"""Ratings datasets in both layouts (dense matrices, user/item/rating triplets) on files the
tests write: ids shared by the two splits, bad rows rejected with their reasons, files that
cannot be read at all refused with the path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from ingest.frames import RejectedRow
from ingest.ratings import Ratings, RatingsError, read_dense, read_ratings, read_triplets


def _write(folder: Path, **files: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".")).write_text(text)
    return folder


def _triples(ratings: Ratings, split: str) -> set[tuple[int, int, int]]:
    """(original user id, original item id, rating) of a split."""
    frame = getattr(ratings, split)
    return {(int(ratings.user_ids[u]), int(ratings.item_ids[i]), r)
            for u, i, r in frame.iter_rows()}


def test_dense_matrices_become_one_row_per_observed_cell(tmp_path: Path) -> None:
    folder = _write(tmp_path / "tiny-coat",
                    train_ascii="0 4 0\n5  0\t1\n0 0 0\n",
                    test_ascii="3 0 0\n0 0 2\n0 5 0\n")
    ratings = read_ratings(folder)
    assert (ratings.name, ratings.layout) == ("tiny-coat", "dense")
    assert _triples(ratings, "train") == {(0, 1, 4), (1, 0, 5), (1, 2, 1)}
    assert _triples(ratings, "test") == {(0, 0, 3), (1, 2, 2), (2, 1, 5)}
    # Rows are users and columns items, both counted from 0; user 2 rates only in test.
    assert ratings.user_ids.tolist() == [0, 1, 2] and ratings.item_ids.tolist() == [0, 1, 2]
    assert ratings.train.columns == ["user", "item", "rating"]
    assert ratings.rejected == {"train.ascii": (), "test.ascii": ()}
    assert read_ratings(folder, name="coat").name == "coat"


def test_triplet_ids_are_remapped_once_for_both_splits(tmp_path: Path) -> None:
    folder = _write(tmp_path / "r3",
                    train_csv="user,item,rating\n100,7,5\n-0,900,2\n100,42,1\n",
                    test_csv="item,rating,user\n42,4,100\n5,3,77\n")
    ratings = read_ratings(folder)
    assert ratings.layout == "triplets"
    # The sorted union of both splits' ids: user 77 and item 5 appear in test only.
    assert ratings.user_ids.tolist() == [0, 77, 100]
    assert ratings.item_ids.tolist() == [5, 7, 42, 900]
    assert ratings.train.rows() == [(2, 1, 5), (0, 3, 2), (2, 2, 1)]
    assert ratings.test.rows() == [(2, 2, 4), (1, 0, 3)]
    # One index per id: item 42 of train and of test is the same index.
    assert _triples(ratings, "test") == {(100, 42, 4), (77, 5, 3)}
    assert ratings.n_users == 3 and ratings.n_items == 4


def test_bad_triplet_rows_are_rejected_with_line_column_and_value(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("user,item,rating\n"
                    "1,2,4\n"          # 2: good
                    "1,3,4.5\n"        # 3: rating not an integer
                    "-1,3,4\n"         # 4: good: ids are any integers
                    "1,3\n"            # 5: a cell short
                    "\n"               # 6: blank, skipped
                    "2,x,1\n"          # 7: id not an integer
                    "1,2,5\n"          # 8: a pair rated already
                    "2,3,4.0,9\n"      # 9: a cell too many
                    " 3 , 4 , 2.0 \n"  # 10: good (spaces and 2.0 pass)
                    "9007199254740993,1,3\n"   # 11, 12: ids past 2^53 stay apart
                    "9007199254740992,1,3\n")
    split = read_triplets(path)
    assert split.frame.rows() == [(1, 2, 4), (-1, 3, 4), (3, 4, 2), (9007199254740993, 1, 3),
                                  (9007199254740992, 1, 3)]
    assert split.rejected == (
        RejectedRow(3, "column 'rating'='4.5' is not an integer", "1,3,4.5"),
        RejectedRow(5, "has 2 cells; the header has 3", "1,3"),
        RejectedRow(7, "column 'item'='x' is not an integer id", "2,x,1"),
        RejectedRow(8, "(user, item)=(1, 2) was rated at line 2 already", "1,2,5"),
        RejectedRow(9, "has 4 cells; the header has 3", "2,3,4.0,9"),
    )


def test_bad_dense_lines_are_rejected_whole_and_keep_the_users_index(tmp_path: Path) -> None:
    path = tmp_path / "train.ascii"
    path.write_text("0 4 0 0\n"
                    "5 0 1\n"          # 2: a cell short
                    "1 x 0 2.5\n"      # 3: two bad cells
                    "0 0 -3 0\n"       # 4: negative
                    "0 0 0 5\n")       # 5: good, user 4
    split = read_dense(path)
    assert split.frame.rows() == [(0, 1, 4), (4, 3, 5)]
    assert split.rejected == (
        RejectedRow(2, "has 3 cells; the matrix has 4 per line", "5 0 1"),
        RejectedRow(3, "column 2 (item 1)='x', column 4 (item 3)='2.5' are not a rating "
                       "(an integer >= 0; 0 = unobserved)", "1 x 0 2.5"),
        RejectedRow(4, "column 3 (item 2)='-3' is not a rating (an integer >= 0; "
                       "0 = unobserved)", "0 0 -3 0"),
    )


def test_many_bad_cells_are_counted_not_all_named(tmp_path: Path) -> None:
    path = tmp_path / "train.ascii"
    path.write_text("1 1 1 1 1\na b c d e\n")
    (rejected,) = read_dense(path).rejected
    assert rejected.reason.startswith("column 1 (item 0)='a', column 2 (item 1)='b', "
                                      "column 3 (item 2)='c' and 2 more cells are not")


def test_rejections_are_reported_per_file(tmp_path: Path) -> None:
    folder = _write(tmp_path / "d", train_csv="user,item,rating\n1,1,5\n1,1,3\n",
                    test_csv="user,item,rating\n1,2,oops\n1,1,4\n")
    ratings = read_ratings(folder)
    assert [row.line for row in ratings.rejected["train.csv"]] == [3]
    assert [row.line for row in ratings.rejected["test.csv"]] == [2]
    assert ratings.test.height == 1


@pytest.mark.parametrize(("files", "message"), [
    ({}, r"no ratings dataset here \(looked for train.ascii and test.ascii or train.csv"),
    ({"train_csv": "user,item,rating\n1,1,5\n"}, r"test.csv: no such file"),
    ({"train_csv": "1,1,5\n", "test_csv": "user,item,rating\n1,1,5\n"},
     r"train.csv: line 1 is not the header user,item,rating \(it is '1,1,5'\)"),
    ({"train_csv": "", "test_csv": "user,item,rating\n1,1,5\n"}, r"train.csv: the file is empty"),
    ({"train_csv": "user,item,rating\n1,1,x\n", "test_csv": "user,item,rating\n1,1,5\n"},
     r"train.csv: no rating to use \(rows rejected: 1\)"),
    ({"train_ascii": "0 1\n", "test_ascii": "0 0\n"}, r"test.ascii: no rating to use"),
    ({"train_ascii": "\n\n", "test_ascii": "1\n"}, r"train.ascii: no ratings"),
])
def test_a_dataset_that_cannot_be_read_names_the_path(tmp_path: Path, files: dict[str, str],
                                                      message: str) -> None:
    folder = _write(tmp_path / "broken", **files)
    with pytest.raises(RatingsError, match=message) as raised:
        read_ratings(folder)
    assert "broken" in str(raised.value)


def test_a_missing_folder_is_a_ratings_error(tmp_path: Path) -> None:
    with pytest.raises(RatingsError, match="nowhere: no such folder"):
        read_ratings(tmp_path / "nowhere")


def test_the_result_checks_its_own_fields() -> None:
    frame = pl.DataFrame({"user": [0], "item": [3], "rating": [5]})
    with pytest.raises(ValueError, match=r"train.item=\[3..3\] must be indices in \[0, 2\)"):
        Ratings("x", "dense", frame, frame, np.arange(1), np.arange(2))
    with pytest.raises(ValueError, match="test has no ratings"):
        Ratings("x", "dense", frame, frame.clear(), np.arange(1), np.arange(4))

from __future__ import annotations

import math
import random

import numpy as np
import polars as pl
import pytest

from ingest.dedupe import DedupeWindow, IdIndex


def test_window_drops_repeats_and_forgets_the_oldest() -> None:
    window = DedupeWindow(3)
    assert [window.add(i) for i in ["a", "b", "a", "c", "d"]] == [True, True, False, True, True]
    assert "a" not in window and len(window) == 3  # "a" was the oldest when "d" arrived
    assert window.add("a") is True and window.add("d") is False


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity=0"):
        DedupeWindow(0)


def test_a_batch_marks_repeats_within_itself_and_against_the_window() -> None:
    window = DedupeWindow(4)
    assert window.add_many(["a", "b"]) == [True, True]
    assert window.add_many(["c", "a", "c", "d"]) == [True, False, False, True]
    assert window.add_many(["e", "f"]) == [True, True]  # "a" and "b" fall out
    assert "a" not in window and "b" not in window and len(window) == 4
    assert window.add_many(["b", "f"]) == [True, False]


def test_the_window_matches_a_reference_over_a_long_random_stream() -> None:
    # The reference: a list of distinct ids in arrival order, cut to the last `capacity`.
    rng = random.Random(7)
    capacity = 50
    window, reference = DedupeWindow(capacity), []
    for _ in range(400):
        batch = [f"e{rng.randrange(300)}" for _ in range(rng.randrange(0, 30))]
        expected = []
        for event_id in batch:
            new = event_id not in reference
            if new:
                reference.append(event_id)
            expected.append(new)
        reference = reference[-capacity:]
        assert window.add_many(batch) == expected
        assert len(window) == len(reference) and all(e in window for e in reference)


def _set_semantics(batches: list[list[str]], seeded: list[str]) -> list[list[bool]]:
    seen = set(seeded)
    flags = []
    for batch in batches:
        flags.append([i not in seen and not seen.add(i) for i in batch])  # type: ignore[func-returns-value]
    return flags


class _FewHashes(IdIndex):
    """Every id hashed to one of 3 values: every lookup is a hash match to confirm."""

    @staticmethod
    def _hash(ids: pl.Series) -> np.ndarray:
        return (ids.str.len_bytes() % 3).cast(pl.UInt64).to_numpy()


@pytest.mark.parametrize("index_type", [IdIndex, _FewHashes])
def test_id_index_marks_what_a_set_would(index_type: type[IdIndex]) -> None:
    rng = random.Random(7)
    seeded = [f"id{rng.randrange(3000)}" for _ in range(500)]
    batches = [[f"id{rng.randrange(3000)}" for _ in range(rng.randrange(0, 700))]
               for _ in range(12)]
    index = index_type(pl.Series(seeded))
    got = [index.add_new(pl.Series(batch, dtype=pl.String)).to_list() for batch in batches]
    assert got == _set_semantics(batches, seeded)
    assert len(index) == len(set(seeded) | {i for b in batches for i in b})


def test_id_index_over_many_small_batches_keeps_few_runs() -> None:
    rng = random.Random(11)
    batches = [[f"id{rng.randrange(5000)}" for _ in range(rng.randrange(0, 60))]
               for _ in range(300)]
    index = IdIndex()
    got = [index.add_new(pl.Series(batch, dtype=pl.String)).to_list() for batch in batches]
    assert got == _set_semantics(batches, [])
    assert len(index) == len({i for b in batches for i in b})
    # Each run is under half the size of the one before it.
    assert 2 <= index.runs <= math.log2(len(index)) + 1

from __future__ import annotations

import random

import pytest

from ingest.dedupe import DedupeWindow


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


def test_without_a_capacity_every_id_is_remembered() -> None:
    window = DedupeWindow(None)
    window.seed([f"e{i}" for i in range(100_000)])
    assert window.add_many(["e0", "new", "e99999", "new", "e5"]) == [
        False, True, False, False, False]
    assert len(window) == 100_001

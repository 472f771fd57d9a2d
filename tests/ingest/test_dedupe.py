from __future__ import annotations

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

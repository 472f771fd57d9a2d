from __future__ import annotations

import polars as pl
import pytest

from ingest.sessions import query_chains, reformulations, sessionize

QUERIES = pl.LazyFrame({
    "user_id": ["a", "a", "a", "a", "b"],
    "ts": [0.0, 60.0, 120.0, 4000.0, 10.0],
    "request_id": ["r1", "r2", "r3", "r4", "r5"],
    "query": ["redd shoe", "red shoe", "red shoes", "hat", "scarf"],
})
CLICKS = pl.LazyFrame({"user_id": ["a", "a"], "ts": [125.0, 4005.0],
                       "request_id": ["r3", "r4"]})


def test_sessions_split_on_inactivity_gap_per_user() -> None:
    rows = sessionize(QUERIES, gap_s=1800).collect()
    assert dict(zip(rows["request_id"], rows["session_id"], strict=True)) == {
        "r1": "a#0", "r2": "a#0", "r3": "a#0", "r4": "a#1", "r5": "b#0"}
    assert sessionize(QUERIES, gap_s=30).collect()["session_id"].n_unique() == 5


def test_gap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="gap_s=0"):
        sessionize(QUERIES, gap_s=0)


def test_query_chains_in_order_with_success_and_reformulations() -> None:
    chains = query_chains(QUERIES, CLICKS, gap_s=1800).collect()
    first = chains.filter(pl.col("session_id") == "a#0").row(0, named=True)
    assert first["queries"] == ["redd shoe", "red shoe", "red shoes"]
    assert first["succeeded"] == [False, False, True]
    pairs = reformulations(chains.lazy()).collect()
    assert pairs.select("failed", "next", "next_succeeded").rows() == [
        ("redd shoe", "red shoe", False), ("red shoe", "red shoes", True)]

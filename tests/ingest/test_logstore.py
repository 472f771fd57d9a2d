from __future__ import annotations

from pathlib import Path

import polars as pl

from ingest.events import Click, Impression, Query, Slot
from ingest.frames import SCHEMAS, events_of, split_events
from ingest.logstore import ParquetLogStore, iter_frames, scan

DAY = 86_400.0
EVENTS = [
    Impression(event_id="i1", ts=10 * DAY + 5, user_id="u", request_id="r1", policy="p",
               slots=[Slot("a", 1, 0.5, 0.25), Slot("b", 2, 0.1, 0.5)],
               context={"f": 1.0, "g": 'quote"d'}),
    Click(event_id="c1", ts=10 * DAY + 6, user_id="u", request_id="r1", item_id="a",
          position=1),
    Impression(event_id="i2", ts=11 * DAY + 1, user_id="v", request_id="r2", policy="p",
               slots=[Slot("c", 1, 0.0, 1.0)]),
    Query(event_id="q1", ts=11 * DAY, user_id="v", request_id="r2", query="hat"),
]


def test_flushed_events_read_back_partitioned_by_type_and_date(tmp_path: Path) -> None:
    store = ParquetLogStore(tmp_path)
    store.write(EVENTS)
    store.flush({("events", 0): 4}, "cluster-a")
    assert sorted(p.parent.name for p in tmp_path.glob("impression/*/*.parquet")) == [
        "date=1970-01-11", "date=1970-01-12"]
    impressions = scan(tmp_path, "impression").sort("ts").collect()
    assert impressions["event_id"].to_list() == ["i1", "i2"]
    assert impressions["slots"][0].to_list() == [
        {"item_id": "a", "position": 1, "score": 0.5, "propensity": 0.25},
        {"item_id": "b", "position": 2, "score": 0.1, "propensity": 0.5}]
    assert store.count() == {"impression": 2, "click": 1, "reaction": 0, "dwell": 0,
                             "query": 1}
    replayed = [e for frames in iter_frames(tmp_path) for e in events_of(frames)]
    assert sorted(replayed, key=lambda e: e.event_id) == sorted(EVENTS,
                                                                 key=lambda e: e.event_id)


def test_unflushed_events_are_invisible_and_checkpoint_holds_offsets(tmp_path: Path) -> None:
    store = ParquetLogStore(tmp_path)
    store.write(EVENTS[:2])
    assert scan(tmp_path, "click").select(pl.len()).collect().item() == 0
    store.flush({("events", 0): 2, ("events", 1): 7}, "cluster-a")
    reopened = ParquetLogStore(tmp_path).checkpoint()
    assert reopened.cluster_id == "cluster-a"
    assert reopened.starts_for("cluster-a", [("events", 0), ("events", 3)]) == {
        ("events", 0): 2}
    assert reopened.starts_for("another-cluster", [("events", 0)]) == {}


def test_files_of_a_flush_that_never_committed_are_removed(tmp_path: Path) -> None:
    store = ParquetLogStore(tmp_path)
    store.write(EVENTS[:2])
    store.flush({}, None)
    # A crash after the data files were renamed but before the checkpoint was replaced.
    orphan = tmp_path / "click" / "date=1970-01-11" / "0000000002.parquet"
    pl.DataFrame({"event_id": ["ghost"]}).write_parquet(orphan)
    assert scan(tmp_path, "click").collect()["event_id"].to_list() == ["c1"]
    ParquetLogStore(tmp_path)
    assert not orphan.exists()


def test_recent_event_ids_cover_the_latest_flushes(tmp_path: Path) -> None:
    store = ParquetLogStore(tmp_path)
    for event in EVENTS:
        store.write([event])
        store.flush({}, None)
    assert store.recent_event_ids(2) == ["i2", "q1"]
    assert set(store.recent_event_ids(100)) == {"i1", "c1", "i2", "q1"}


def test_a_flush_without_offsets_keeps_the_checkpoint(tmp_path: Path) -> None:
    # kafka-python revokes an empty assignment before the first join, when the cluster id is
    # not known yet: that flush must not wipe offsets stored by an earlier run.
    store = ParquetLogStore(tmp_path)
    store.flush({("events", 0): 9}, "cluster-a")
    store.flush({}, None)
    assert ParquetLogStore(tmp_path).checkpoint().offsets == {("events", 0): 9}
    store.flush({("events", 0): 3}, "cluster-b")  # a new cluster: old offsets are void
    assert ParquetLogStore(tmp_path).checkpoint().offsets == {("events", 0): 3}


def test_slates_of_one_size_and_of_mixed_sizes_become_the_same_rows() -> None:
    """Equal slate sizes take a reshape, mixed sizes a grouping: both give back the
    events, slots in order."""
    def impression(i: int, size: int) -> Impression:
        return Impression(event_id=f"i{i}", ts=float(i), user_id="u", request_id=f"r{i}",
                          policy="p", slots=[Slot(f"x{i}-{p}", p, 1.0 / p, 0.5)
                                             for p in range(1, size + 1)])
    for sizes in ([3, 3, 3], [3, 1, 2], [1]):
        events = [impression(i, size) for i, size in enumerate(sizes)]
        frame = split_events(events)["impression"]
        assert frame.schema == SCHEMAS["impression"]
        assert frame["slots"].list.len().to_list() == sizes
        assert events_of({"impression": frame}) == events

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from ingest.events import Click, Impression, Query, Slot
from ingest.frames import SCHEMAS, events_of, split_events
from ingest.logstore import CHECKPOINT, ParquetLogStore, StoreLocked, compact, iter_frames, scan
from ingest.sink import MemorySink

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
    store.write(split_events(EVENTS))
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
    batches = list(iter_frames(tmp_path))
    assert sum(b.read for b in batches) == 4 and not any(b.rejected for b in batches)
    replayed = [e for batch in batches for e in events_of(batch.frames)]
    assert sorted(replayed, key=lambda e: e.event_id) == sorted(EVENTS,
                                                                 key=lambda e: e.event_id)


def test_unflushed_events_are_invisible_and_checkpoint_holds_offsets(tmp_path: Path) -> None:
    store = ParquetLogStore(tmp_path)
    store.write(split_events(EVENTS[:2]))
    assert scan(tmp_path, "click").select(pl.len()).collect().item() == 0
    store.flush({("events", 0): 2, ("events", 1): 7}, "cluster-a")
    store.close()
    reopened = ParquetLogStore(tmp_path).checkpoint()
    assert reopened.cluster_id == "cluster-a"
    assert reopened.starts_for("cluster-a", [("events", 0), ("events", 3)]) == {
        ("events", 0): 2}
    assert reopened.starts_for("another-cluster", [("events", 0)]) == {}


def test_files_of_a_flush_that_never_committed_are_removed(tmp_path: Path) -> None:
    store = ParquetLogStore(tmp_path)
    store.write(split_events(EVENTS[:2]))
    store.flush({}, None)
    store.close()
    # A crash after the data files were renamed but before the checkpoint was replaced.
    orphan = tmp_path / "click" / "date=1970-01-11" / "0000000002.parquet"
    pl.DataFrame({"event_id": ["ghost"]}).write_parquet(orphan)
    assert scan(tmp_path, "click").collect()["event_id"].to_list() == ["c1"]
    ParquetLogStore(tmp_path)
    assert not orphan.exists()


def test_recent_event_ids_cover_the_latest_flushes(tmp_path: Path) -> None:
    store = ParquetLogStore(tmp_path)
    for event in EVENTS:
        store.write(split_events([event]))
        store.flush({}, None)
    assert store.recent_event_ids(2) == ["i2", "q1"]
    assert set(store.recent_event_ids(100)) == {"i1", "c1", "i2", "q1"}


def test_a_flush_without_offsets_keeps_the_checkpoint(tmp_path: Path) -> None:
    # kafka-python revokes an empty assignment before the first join, when the cluster id is
    # not known yet: that flush must not wipe offsets stored by an earlier run.
    store = ParquetLogStore(tmp_path)
    store.flush({("events", 0): 9}, "cluster-a")
    store.flush({}, None)
    store.close()
    store = ParquetLogStore(tmp_path)
    assert store.checkpoint().offsets == {("events", 0): 9}
    store.flush({("events", 0): 3}, "cluster-b")  # a new cluster: old offsets are void
    store.close()
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


def test_a_memory_sink_keeps_flushed_frames_and_refuses_another_schema() -> None:
    sink = MemorySink()
    sink.write(split_events(EVENTS[:2]))
    sink.flush({("events", 0): 2}, "cluster-a")
    sink.write(split_events(EVENTS[2:]))
    assert [e.event_id for e in sink.events] == ["i1", "c1"]  # the rest is not flushed
    sink.flush({("events", 0): 4}, "cluster-a")
    assert sink.frames["impression"]["event_id"].to_list() == ["i1", "i2"]
    assert sorted(sink.events, key=lambda e: e.event_id) == sorted(
        EVENTS, key=lambda e: e.event_id)
    assert sink.recent_event_ids(3) == ["c1", "i2", "q1"]
    assert sink.checkpoint().offsets == {("events", 0): 4}
    wrong = split_events(EVENTS[1:2])["click"].with_columns(pl.col("position").cast(pl.Int64))
    with pytest.raises(TypeError, match="click column position is Int64, not Int32"):
        sink.write({"click": wrong})


def test_a_second_writer_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    store = ParquetLogStore(tmp_path)
    store.write(split_events(EVENTS))
    store.flush({}, None)
    with pytest.raises(StoreLocked, match=rf"{tmp_path}.*process \d+") as refused:
        ParquetLogStore(tmp_path)
    assert refused.value.root == tmp_path
    with pytest.raises(StoreLocked):
        compact(tmp_path)
    assert scan(tmp_path, "click").collect().height == 1  # readers take no lock
    store.close()
    with ParquetLogStore(tmp_path) as again:
        assert again.count()["impression"] == 2


_HOLD = """
import sys
from ingest.logstore import ParquetLogStore, StoreLocked
try:
    store = ParquetLogStore(sys.argv[1])
except StoreLocked as error:
    print(f"refused {error.pid}", flush=True)
    sys.exit(3)
print("holding", flush=True)
sys.stdin.read()
"""


def _writer_process(root: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _HOLD, str(root)], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parents[2])


def test_a_writer_in_another_process_is_refused_and_its_death_frees_the_store(
        tmp_path: Path) -> None:
    with ParquetLogStore(tmp_path):
        other = _writer_process(tmp_path)
        assert other.communicate(timeout=60)[0] == f"refused {os.getpid()}\n"
        assert other.returncode == 3
    holder = _writer_process(tmp_path)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        with pytest.raises(StoreLocked) as refused:
            ParquetLogStore(tmp_path)
        assert refused.value.pid == holder.pid
    finally:
        holder.kill()
        holder.wait(timeout=60)
    ParquetLogStore(tmp_path).close()  # the kernel released the dead writer's lock


def _click(i: int, day: int) -> Click:
    return Click(event_id=f"c{day}-{i}", ts=day * DAY + i, user_id="u", request_id=f"r{i}",
                 item_id="a", position=1)


def _store_over_two_days(root: Path) -> ParquetLogStore:
    """Three flushes, each with clicks on day 10 (closed) and day 11 (the newest)."""
    store = ParquetLogStore(root)
    for flush in range(3):
        store.write(split_events([_click(flush * 2 + j, day) for day in (10, 11)
                                  for j in range(2)]))
        store.flush({("events", 0): 4 * (flush + 1)}, "cluster-a")
    return store


def _rows(root: Path) -> pl.DataFrame:
    return scan(root, "click").collect().sort("event_id")


CLOSED, OPEN = "click/date=1970-01-11", "click/date=1970-01-12"


def _files(root: Path, folder: str) -> list[str]:
    return sorted(p.name for p in (root / folder).iterdir())


def test_compaction_leaves_one_file_per_closed_date_and_the_same_rows(tmp_path: Path) -> None:
    store = _store_over_two_days(tmp_path)
    before, open_files = _rows(tmp_path), _files(tmp_path, OPEN)
    assert len(_files(tmp_path, CLOSED)) == 3
    assert store.compact() == {CLOSED: 3}
    assert _files(tmp_path, CLOSED) == ["0000000004.parquet"]
    assert _files(tmp_path, OPEN) == open_files
    assert _rows(tmp_path).equals(before)
    assert store.checkpoint().offsets == {("events", 0): 12}
    # The merged file is old news: the latest flush is what re-seeds deduplication.
    assert sorted(store.recent_event_ids(2)) == ["c11-4", "c11-5"]
    # A late event for the closed date lands beside the merged file and is merged next time.
    store.write(split_events([_click(99, 10)]))
    store.flush({}, None)
    assert _rows(tmp_path).height == before.height + 1
    store.close()  # compacts
    assert _files(tmp_path, CLOSED) == ["0000000006.parquet"]
    assert Counter(_rows(tmp_path)["event_id"]) == Counter([*before["event_id"], "c10-99"])
    assert compact(tmp_path) == {}


def test_a_compaction_cut_short_by_a_crash_shows_every_event_once(tmp_path: Path) -> None:
    _store_over_two_days(tmp_path).close(compact=False)
    before = _rows(tmp_path)
    saved = tmp_path.parent / "saved"
    shutil.copytree(tmp_path / CLOSED, saved / "closed")
    shutil.copy(tmp_path / CHECKPOINT, saved / CHECKPOINT)
    assert compact(tmp_path) == {CLOSED: 3}
    merged = _files(tmp_path, CLOSED)

    # Dead after the checkpoint, before the superseded files were deleted.
    shutil.copytree(saved / "closed", tmp_path / CLOSED, dirs_exist_ok=True)
    assert json.loads((tmp_path / CHECKPOINT).read_text())["compacted"] == {CLOSED: 4}
    assert len(_files(tmp_path, CLOSED)) == 4 and _rows(tmp_path).equals(before)
    ParquetLogStore(tmp_path).close(compact=False)  # a writer finishes the deletion
    assert _files(tmp_path, CLOSED) == merged and _rows(tmp_path).equals(before)

    # Dead after the merged file was written, before the checkpoint was replaced.
    shutil.copy(saved / CHECKPOINT, tmp_path / CHECKPOINT)
    shutil.copytree(saved / "closed", tmp_path / CLOSED, dirs_exist_ok=True)
    assert _rows(tmp_path).equals(before)  # the merged file is an orphan, not read
    ParquetLogStore(tmp_path).close(compact=False)
    assert merged[0] not in _files(tmp_path, CLOSED) and _rows(tmp_path).equals(before)
    assert compact(tmp_path) == {CLOSED: 3} and _rows(tmp_path).equals(before)

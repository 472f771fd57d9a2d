from __future__ import annotations

import os
from pathlib import Path

import pytest

from ingest.journal import (
    Entry,
    Journal,
    JournalError,
    JournalFull,
    JournalLocked,
    journal_folder,
    journal_folders,
    open_journal,
)

CLUSTER = "127.0.0.1:9092"


def _entries(n: int, start: int = 0, topic: str = "events",
             cluster: str = CLUSTER) -> list[Entry]:
    return [Entry(topic, cluster, f"k{i}".encode() if i % 3 else None, f"value-{i}".encode(),
                  [("h", b"%d" % i)] if i % 2 else None) for i in range(start, start + n)]


def test_records_come_back_in_order_with_keys_and_headers(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=1 << 20)
    journal.append(_entries(5))
    journal.append(_entries(5, start=5))
    assert journal.pending == 10
    assert journal.peek(100) == _entries(10)
    journal.advance(4)
    assert journal.peek(3) == _entries(3, start=4)
    journal.advance(6)
    assert journal.pending == 0 and journal.size_bytes == 0


def test_each_record_keeps_its_topic_and_cluster(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=1 << 20, cluster=CLUSTER)
    mixed = _entries(2, topic="events") + _entries(2, start=2, topic="events.dlq")
    journal.append(mixed)
    journal.close()
    reopened = Journal(tmp_path, max_bytes=1 << 20, cluster=CLUSTER)
    assert [(e.topic, e.cluster) for e in reopened.entries()] == [
        ("events", CLUSTER), ("events", CLUSTER), ("events.dlq", CLUSTER),
        ("events.dlq", CLUSTER)]
    assert reopened.peek(10) == mixed


def test_a_journal_opens_only_for_the_cluster_its_records_are_for(tmp_path: Path) -> None:
    Journal(tmp_path, max_bytes=1 << 20, cluster=CLUSTER).append(_entries(3))
    with pytest.raises(JournalError, match=r"cluster='127.0.0.1:9092', not "
                                         r"cluster='10.0.0.5:9092'.*clickloop drain"):
        Journal(tmp_path, max_bytes=1 << 20, cluster="10.0.0.5:9092")
    assert Journal(tmp_path, max_bytes=1 << 20).pending == 3  # drain and status open any


def test_each_cluster_gets_its_own_folder_under_the_root(tmp_path: Path) -> None:
    folders = {journal_folder(tmp_path, c) for c in ("a:1", "a_1", "../a:1", CLUSTER)}
    assert len(folders) == 4 and all(f.parent == tmp_path for f in folders)
    Journal(journal_folder(tmp_path, CLUSTER), 1 << 20).append(_entries(1))
    Journal(journal_folder(tmp_path / "dlq", CLUSTER), 1 << 20).append(_entries(1))
    Journal(journal_folder(tmp_path, "a:1"), 1 << 20)  # opened, never written: no file
    assert journal_folders(tmp_path) == sorted([journal_folder(tmp_path, CLUSTER),
                                                journal_folder(tmp_path / "dlq", CLUSTER)])


def test_reopened_journal_resumes_where_the_drain_stopped(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=1 << 20)
    journal.append(_entries(10))
    journal.advance(3)
    journal.close()
    reopened = Journal(tmp_path, max_bytes=1 << 20)
    assert reopened.pending == 7
    assert reopened.peek(10) == _entries(7, start=3)


def test_a_requeued_record_goes_to_the_end_and_the_file_stays_bounded(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=1 << 20)
    journal.append(_entries(4))
    first = journal.peek(4)
    journal.advance(4, requeue=[first[1]])  # three delivered, one refused
    assert journal.peek(10) == [first[1]]
    journal.append(_entries(2, start=4))
    for _ in range(50):  # refused again and again, while the others go through
        waiting = journal.peek(10)
        journal.advance(len(waiting), requeue=[first[1]])
    assert journal.peek(10) == [first[1]]
    alone = Journal(tmp_path / "alone", max_bytes=1 << 20)
    alone.append([first[1]])
    assert journal.size_bytes <= 2 * alone.size_bytes  # not one copy per attempt
    journal.close()
    assert Journal(tmp_path, max_bytes=1 << 20).peek(10) == [first[1]]


def test_torn_write_at_the_end_is_cut_off(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=1 << 20)
    journal.append(_entries(4))
    journal.close()
    with open(next(tmp_path.glob("*.bin")), "ab") as handle:
        handle.write(b"\x01\x02\x03\x04\x05\x06")  # a crash in the middle of a record
    reopened = Journal(tmp_path, max_bytes=1 << 20)
    assert reopened.pending == 4 and reopened.peek(10) == _entries(4)
    reopened.append(_entries(1, start=4))
    reopened.close()
    assert Journal(tmp_path, max_bytes=1 << 20).peek(10) == _entries(5)


def test_damage_before_the_end_is_reported_and_nothing_is_cut(tmp_path: Path) -> None:
    Journal(tmp_path, max_bytes=1 << 20).append(_entries(8))
    data = next(tmp_path.glob("*.bin"))
    damaged = bytearray(data.read_bytes())
    damaged[len(damaged) // 3] ^= 0xFF  # a flipped byte in some record in the middle
    data.write_bytes(bytes(damaged))
    with pytest.raises(JournalError, match=r"records.bin is corrupt at byte \d+ .*records "
                                           r"before it are intact"):
        Journal(tmp_path, max_bytes=1 << 20)
    assert data.read_bytes() == bytes(damaged)  # reported, never truncated
    data.with_suffix(".pos").write_text("garbage")
    with pytest.raises(JournalError, match="position file .* is corrupt: 'garbage'"):
        Journal(tmp_path, max_bytes=1 << 20)


def test_one_process_at_a_time_and_a_second_producer_takes_a_sibling(tmp_path: Path) -> None:
    first = open_journal(tmp_path, CLUSTER, 1 << 20)
    with pytest.raises(JournalLocked, match=f"in use by process {os.getpid()}"):
        Journal(first.directory, 1 << 20)
    second = open_journal(tmp_path, CLUSTER, 1 << 20)
    assert second.directory != first.directory
    first.append(_entries(2))
    second.append(_entries(3, start=2))
    first.close()
    second.close()
    found = journal_folders(tmp_path)
    assert found == sorted([first.directory, second.directory])
    assert sorted(e.value for f in found for e in Journal(f, 1 << 20).entries()) == sorted(
        e.value for e in _entries(5))


def test_full_journal_refuses_everything_of_the_batch(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=600)
    journal.append(_entries(5))
    size = journal.size_bytes
    with pytest.raises(JournalFull, match="journal_max_bytes=600") as caught:
        journal.append(_entries(20, start=5))
    assert "refusing new events" in str(caught.value)
    assert journal.size_bytes == size and journal.pending == 5

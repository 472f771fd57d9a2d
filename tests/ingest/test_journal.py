from __future__ import annotations

from pathlib import Path

import pytest

from ingest.journal import Journal, JournalFull


def _records(n: int, start: int = 0) -> list[tuple[bytes | None, bytes, list | None]]:
    return [(f"k{i}".encode() if i % 3 else None, f"value-{i}".encode(),
             [("h", b"%d" % i)] if i % 2 else None) for i in range(start, start + n)]


def test_records_come_back_in_order_with_keys_and_headers(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=1 << 20)
    journal.append(_records(5))
    journal.append(_records(5, start=5))
    assert journal.pending == 10
    assert journal.peek(100) == _records(10)
    journal.advance(4)
    assert journal.peek(3) == _records(3, start=4)
    journal.advance(6)
    assert journal.pending == 0 and journal.size_bytes == 0


def test_reopened_journal_resumes_where_the_drain_stopped(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=1 << 20)
    journal.append(_records(10))
    journal.advance(7)
    reopened = Journal(tmp_path, max_bytes=1 << 20)
    assert reopened.pending == 3
    assert reopened.peek(10) == _records(3, start=7)


def test_torn_write_at_the_end_is_cut_off(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=1 << 20)
    journal.append(_records(4))
    with open(tmp_path / "journal.bin", "ab") as handle:
        handle.write(b"\x01\x02\x03\x04\x05\x06")  # a crash in the middle of a record
    reopened = Journal(tmp_path, max_bytes=1 << 20)
    assert reopened.pending == 4 and reopened.peek(10) == _records(4)
    reopened.append(_records(1, start=4))
    assert Journal(tmp_path, max_bytes=1 << 20).peek(10) == _records(5)


def test_full_journal_refuses_everything_of_the_batch(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=400)
    journal.append(_records(5))
    size = journal.size_bytes
    with pytest.raises(JournalFull, match="journal_max_bytes=400") as caught:
        journal.append(_records(20, start=5))
    assert "refusing new events" in str(caught.value)
    assert journal.size_bytes == size and journal.pending == 5

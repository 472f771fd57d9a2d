from __future__ import annotations

import multiprocessing
import os
import random
import signal
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import polars as pl
import pytest

from ingest.codec import encode
from ingest.events import Click, Dwell, Impression, Slot
from ingest.frames import LogBatch, RejectedRow
from ingest.jsonl_log import (
    PARALLEL_MIN_BYTES,
    auto_workers,
    line_ranges,
    split_lines,
    validate_text,
    validated_batches,
)


def _log(path: Path, n: int, seed: int = 3) -> Path:
    """n events (impressions, clicks, dwell), a bad line every 97th and blank lines."""
    rng = random.Random(seed)
    lines: list[bytes] = []
    for i in range(n):
        if i % 97 == 50:
            lines.append(rng.choice([b"{oops", b'{"type":"click"}', b"[]",
                                     b'{"type":"nope","event_id":"x"}']))
        elif i % 3 == 0:
            slots = [Slot(item_id=f"i{rng.randrange(50)}-{p}", position=p, score=1.0 / p,
                          propensity=0.5) for p in range(1, 4)]
            lines.append(encode(Impression(event_id=f"e{i}", ts=float(i), user_id="u",
                                           request_id=f"r{i}", slots=slots, policy="p")))
        elif i % 3 == 1:
            lines.append(encode(Click(event_id=f"e{i}", ts=float(i), user_id="u",
                                      request_id=f"r{i - 1}", item_id="i1-1", position=1)))
        else:
            lines.append(encode(Dwell(event_id=f"e{i}", ts=float(i), user_id="u",
                                      request_id=f"r{i - 2}", item_id="i1-1", seconds=3.5)))
        if i % 500 == 7:
            lines.append(b"   ")
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _merged(batches: Iterator[LogBatch]
            ) -> tuple[dict[str, pl.DataFrame], int, list[RejectedRow]]:
    """All batches as one: frames by type, lines read, rejects."""
    frames: dict[str, list[pl.DataFrame]] = {}
    read, rejected = 0, []
    for batch in batches:
        for kind, frame in batch.frames.items():
            frames.setdefault(kind, []).append(frame)
        rejected += batch.rejected
        read += batch.read
    return {k: pl.concat(v) for k, v in frames.items()}, read, rejected


def test_a_pool_gives_what_one_process_gives_with_file_line_numbers(tmp_path: Path) -> None:
    log = _log(tmp_path / "log.jsonl", 6000)
    serial = _merged(validated_batches(log, workers=1, range_bytes=40_000))
    parallel = _merged(validated_batches(log, workers=2, range_bytes=40_000))
    assert os.path.getsize(log) > 20 * 40_000  # many ranges, several per worker
    assert serial[1] == parallel[1] == 6000  # bad lines are read, blank ones are not
    assert serial[2] == parallel[2] and len(serial[2]) == len(range(50, 6000, 97))
    assert serial[0].keys() == parallel[0].keys() == {"impression", "click", "dwell"}
    for kind in serial[0]:
        assert serial[0][kind].equals(parallel[0][kind])
    # Reject lines are the file's lines, blank lines counted.
    lines = log.read_bytes().split(b"\n")
    assert all(lines[r.line - 1].decode() == r.raw for r in serial[2])


def test_line_ranges_cover_the_file_on_line_boundaries(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_bytes(b"\n".join(b"x" * random.Random(i).randrange(1, 300)
                               for i in range(2000)) + b"\nno-newline-at-end")
    ranges = line_ranges(log, 1000)
    data = log.read_bytes()
    assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert all(data[end - 1:end] == b"\n" for _, end in ranges[:-1])
    lines = [line for start, end in ranges for line in split_lines(data[start:end])]
    assert lines == data.split(b"\n")


def test_a_line_is_one_event_on_the_fast_path_as_on_the_slow_one() -> None:
    """A clean piece is decoded in one call, a piece with a bad line line by line: both
    count the same lines and reject a line that holds two events."""
    good = [encode(Click(event_id=f"e{i}", ts=float(i), user_id="u", request_id="r",
                         item_id="i", position=1)) for i in range(4)]
    clean = validate_text(b"\n".join(good) + b"\n\r\n  \n", keep_messages=True)
    assert (clean.read, clean.rejected) == (4, [])
    assert clean.frames["click"]["event_id"].to_list() == ["e0", "e1", "e2", "e3"]
    assert clean.messages is not None and clean.messages["message"].to_list() == [
        g.decode() for g in good]
    two_on_one = validate_text(good[0] + b"\n\n" + good[1] + b" " + good[2] + b"\n" + good[3],
                               keep_messages=True)
    assert two_on_one.read == 3
    assert [(r.line, r.raw) for r in two_on_one.rejected] == [
        (3, (good[1] + b" " + good[2]).decode())]
    assert "trailing characters" in two_on_one.rejected[0].reason
    assert two_on_one.frames["click"]["event_id"].to_list() == ["e0", "e3"]
    assert two_on_one.messages is not None and two_on_one.messages["message"].to_list() == [
        good[0].decode(), good[3].decode()]


def test_small_logs_stay_in_this_process(tmp_path: Path) -> None:
    log = _log(tmp_path / "log.jsonl", 100)
    assert os.path.getsize(log) < PARALLEL_MIN_BYTES
    assert auto_workers(log) == 1 and auto_workers(log, 3) == 3


def test_a_dead_worker_is_raised_not_waited_for(tmp_path: Path) -> None:
    log = _log(tmp_path / "log.jsonl", 6000)
    batches = validated_batches(log, workers=2, range_bytes=10_000)
    next(batches)
    for child in multiprocessing.active_children():
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
    with pytest.raises(BrokenProcessPool):
        for _ in batches:
            pass
    assert not multiprocessing.active_children()


def test_abandoning_a_parallel_read_stops_its_workers(tmp_path: Path) -> None:
    log = _log(tmp_path / "log.jsonl", 6000)
    batches = validated_batches(log, workers=2, range_bytes=10_000)
    next(batches)
    assert len(multiprocessing.active_children()) == 2
    batches.close()  # shuts the pool down and joins its workers before it returns
    assert not multiprocessing.active_children()

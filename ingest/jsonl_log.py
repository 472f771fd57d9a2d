"""A JSON-lines event log (clickloop's own log format) read into validated batches.

Every line is decoded by the stream's decoder (:mod:`ingest.codec`: the consumer's contract
and wording) and the good events become frames (:func:`ingest.frames.split_events`). The
log is cut into line-aligned byte ranges validated by :func:`validate_range`, a pure
function; a large log maps it over the ranges in a standard process pool, in file order, so
the result is the one of a single process, only sooner. Reject line numbers are the file's
lines, from 1, blank lines counted.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import replace

import polars as pl

from ingest.codec import decode_batch, decode_lines
from ingest.events import EVENT_TYPES
from ingest.frames import MESSAGES_SCHEMA, EventFrames, LogBatch, RejectedRow, split_events

#: Lines are turned into columns this many bytes at a time, while the piece's event objects
#: are still in the CPU cache.
DECODE_BYTES = 2 << 20
#: Below this a log is read in one process: a worker's start (importing polars) costs more.
PARALLEL_MIN_BYTES = 64 << 20
MAX_AUTO_WORKERS = 8
RANGE_BYTES = 4 << 20
#: A UTF-8 byte order mark, which some tools write at the start of a text file.
BOM = b"\xef\xbb\xbf"


def validate_range(path: str | os.PathLike[str], start: int, end: int,
                   keep_messages: bool = False) -> tuple[LogBatch, int]:
    """The events of bytes ``[start, end)`` of a log (whole lines) as a batch whose reject
    lines count from 1 at ``start``, and how many line ends it holds."""
    with open(path, "rb") as handle:
        handle.seek(start)
        text = handle.read(end - start)
    if start == 0 and text.startswith(BOM):
        text = b" " * len(BOM) + text[len(BOM):]  # blanks keep every offset where it was
    return validate_text(text, keep_messages), text.count(b"\n")


def validate_text(text: bytes, keep_messages: bool = False) -> LogBatch:
    """Decode and validate the lines of ``text`` (blank ones skipped): a clean piece in one
    msgspec call, a piece with a bad line line by line, to word each rejection. With
    ``keep_messages`` the batch keeps the valid lines themselves (for a replay to Kafka)."""
    parts: list[EventFrames] = []
    rejected: list[RejectedRow] = []
    messages: list[pl.DataFrame] = []
    read = 0
    view = memoryview(text)
    for start, end in line_cuts(text, DECODE_BYTES):
        events = decode_lines(view[start:end])
        if events is None:
            first = 1 + text.count(b"\n", 0, start)  # counted only where a line is bad
            numbered = [(number, line) for number, line in
                        enumerate(map(bytes.strip, text[start:end].split(b"\n")), first) if line]
            decoded, bad = decode_batch([line for _, line in numbered])
            rejected += [RejectedRow(numbered[r.index][0], r.reason,
                                     numbered[r.index][1].decode(errors="replace")) for r in bad]
            read += len(numbered)
            events = [event for event in decoded if event is not None]
            kept = [line for (_, line), event in zip(numbered, decoded, strict=True)
                    if event is not None]
        else:
            kept = split_lines(view[start:end]) if keep_messages else []
            read += len(events)
        if keep_messages and events:
            messages.append(pl.DataFrame(
                {"ts": [e.ts for e in events], "user_id": [e.user_id for e in events],
                 "message": [line.decode() for line in kept]}, schema=MESSAGES_SCHEMA))
        parts.append(split_events(events))
    frames = {kind: pl.concat([part[kind] for part in parts if kind in part])
              for kind in EVENT_TYPES if any(kind in part for part in parts)}
    return LogBatch(frames, read, rejected,
                    (pl.concat(messages) if messages else pl.DataFrame(schema=MESSAGES_SCHEMA))
                    if keep_messages else None)


def line_cuts(text: bytes | mmap.mmap, size: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` offsets covering ``text``, each about ``size`` bytes long and ending
    just after a newline (or at the end)."""
    start = 0
    while start < len(text):
        newline = text.find(b"\n", start + size - 1)  # the end of the line the cut fell in
        end = len(text) if newline < 0 else newline + 1
        yield start, end
        start = end


def line_ranges(path: str | os.PathLike[str], range_bytes: int) -> list[tuple[int, int]]:
    """:func:`line_cuts` of a file, mapped: only the page after each cut is read."""
    if os.path.getsize(path) == 0:
        return []
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ
                                                ) as mapped:
        return list(line_cuts(mapped, range_bytes))


def split_lines(text: bytes | memoryview) -> list[bytes]:
    """The non-blank lines of ``text``, stripped (carriage returns too)."""
    return list(filter(None, map(bytes.strip, bytes(text).split(b"\n"))))


def auto_workers(path: str | os.PathLike[str], requested: int = 0) -> int:
    """Processes that validate a log: ``requested`` if above 0, else one per core for a log
    of :data:`PARALLEL_MIN_BYTES` or more, and 1 (this process, no pool) below."""
    if requested > 0:
        return requested
    if os.path.getsize(path) < PARALLEL_MIN_BYTES:
        return 1
    return min(len(os.sched_getaffinity(0)), MAX_AUTO_WORKERS)


def validated_batches(path: str | os.PathLike[str], workers: int = 0,
                      range_bytes: int = RANGE_BYTES, keep_messages: bool = False
                      ) -> Iterator[LogBatch]:
    """The log validated range by range, in file order, by :func:`auto_workers` processes
    (spawned: a script that uses a pool needs the ``if __name__ == "__main__":`` guard)."""
    ranges = line_ranges(path, range_bytes)
    count = auto_workers(path, workers)
    batches = (_in_pool(path, ranges, count, keep_messages) if count > 1 else
               (validate_range(path, s, e, keep_messages) for s, e in ranges))
    before = 0  # the file's lines before the current range
    for batch, lines in batches:
        yield replace(batch, rejected=[replace(r, line=r.line + before) for r in batch.rejected])
        before += lines


def _in_pool(path: str | os.PathLike[str], ranges: list[tuple[int, int]], workers: int,
             keep_messages: bool) -> Iterator[tuple[LogBatch, int]]:
    """:func:`validate_range` over ``ranges`` in a pool, in order; two ranges a worker in
    flight at most, so that results never pile up in memory."""
    # spawn, not fork: polars runs threads, and a forked child can inherit a held lock.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    pending: deque[Future[tuple[LogBatch, int]]] = deque()
    try:
        for start, end in ranges:
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
            pending.append(pool.submit(validate_range, path, start, end, keep_messages))
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

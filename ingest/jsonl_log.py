"""A JSON-lines event log (clickloop's own log format) read into validated frames.

Every line is decoded by the stream's decoder (:func:`ingest.codec.decode_batch`: the same
contract and the same wording of reasons as the consumer), and the good events become one
frame per type (:func:`ingest.frames.split_events`): Python work for every line, so a
large log is cut into line-aligned byte ranges which worker processes
(:class:`ingest.child.Child`) validate side by side; their results come back in file order,
so the replay is the same as in one process, only sooner (``benchmarks/ingest.py`` times
both).

Line numbers count non-blank lines from 1, in one process or many.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import polars as pl

from ingest.child import Child, Handler, serve
from ingest.codec import decode_batch
from ingest.events import EVENT_TYPES
from ingest.frames import EventFrames, split_events

#: Lines are decoded and turned into columns this many at a time, so that the event
#: objects of a chunk are still in the CPU cache when their columns are read (a whole 32 MB
#: read at once made the column pass markedly slower).
DECODE_CHUNK = 10_000
#: A log smaller than this is read in one process: the workers' start (an interpreter
#: importing polars each) eats what they save. A 200k-event (41 MB) log replayed at 237k
#: events/s with 2 workers against 321k in one process, on 2 cores (``benchmarks/ingest.py
#: --quick --replay-events 200000 --replay-workers 2``).
PARALLEL_MIN_BYTES = 64 << 20
#: The most workers :func:`auto_workers` picks.
MAX_AUTO_WORKERS = 8
#: Byte ranges given to workers are at most this large, and small enough that each worker
#: gets about four (so none idles long while the last ones finish).
MAX_RANGE_BYTES = 32 << 20
MIN_RANGE_BYTES = 1 << 20
#: Ranges a worker holds at once: one it works on and one queued, so it never waits.
_QUEUED_PER_WORKER = 2


@dataclass
class ValidatedLines:
    """The outcome of validating consecutive lines of a log."""

    frames: EventFrames
    read: int
    #: (index among these lines, from 0; reason; the line as text) for each rejected line.
    rejected: list[tuple[int, str, str]] = field(default_factory=list)


def validate_lines(lines: list[bytes]) -> ValidatedLines:
    """Decode and validate ``lines`` (one event each) into frames of the good events."""
    parts: list[EventFrames] = []
    rejected: list[tuple[int, str, str]] = []
    for start in range(0, len(lines), DECODE_CHUNK):
        chunk = lines[start:start + DECODE_CHUNK]
        decoded, bad = decode_batch(chunk)
        rejected += [(start + r.index, r.reason, chunk[r.index].decode(errors="replace"))
                     for r in bad]
        parts.append(split_events([e for e in decoded if e is not None] if bad else decoded))
    kinds = [kind for kind in EVENT_TYPES if any(kind in part for part in parts)]
    frames = {kind: pl.concat([part[kind] for part in parts if kind in part])
              for kind in kinds}
    return ValidatedLines(frames, len(lines), rejected)


def line_ranges(path: str | os.PathLike[str], range_bytes: int) -> list[tuple[int, int]]:
    """``(start, end)`` byte ranges covering the file, each about ``range_bytes`` long and
    ending just after a newline (or at the end of the file)."""
    size = os.path.getsize(path)
    ranges: list[tuple[int, int]] = []
    start = 0
    with open(path, "rb") as handle:
        while start < size:
            handle.seek(min(start + range_bytes, size))
            handle.readline()  # on to the end of the line the cut fell in
            end = min(handle.tell(), size)
            ranges.append((start, end))
            start = end
    return ranges


def read_lines(path: str | os.PathLike[str], start: int, end: int) -> list[bytes]:
    """The non-blank lines in bytes ``[start, end)`` of a file, stripped (``\r`` too), split
    and filtered by C-level calls, not a Python loop."""
    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read(end - start)
    return list(filter(None, map(bytes.strip, data.split(b"\n"))))


def jsonl_batches(path: str | os.PathLike[str], chunk_bytes: int = MAX_RANGE_BYTES
                  ) -> Iterator[list[bytes]]:
    """The non-blank lines of a JSON-lines file, a :func:`line_ranges` range at a time
    (the ranges workers get, read the same way)."""
    for start, end in line_ranges(path, chunk_bytes):
        if lines := read_lines(path, start, end):
            yield lines


def auto_workers(path: str | os.PathLike[str], requested: int = 0) -> int:
    """Worker processes for a log: ``requested`` if above 0, else one per CPU core (at
    most :data:`MAX_AUTO_WORKERS`) for a log of :data:`PARALLEL_MIN_BYTES` or more, and
    none (1: this process) for a smaller one."""
    if requested > 0:
        return requested
    if os.path.getsize(path) < PARALLEL_MIN_BYTES:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), MAX_AUTO_WORKERS))


def validated_batches(path: str | os.PathLike[str], workers: int = 0,
                      range_bytes: int | None = None) -> Iterator[ValidatedLines]:
    """The log validated batch by batch, in file order: in this process, or in
    :func:`auto_workers` worker processes (``workers``: 1 for none, 0 for automatic), each
    given byte ranges of ``range_bytes`` (default: see :data:`MAX_RANGE_BYTES`)."""
    count = auto_workers(path, workers)
    if count <= 1:
        for lines in jsonl_batches(path):
            yield validate_lines(lines)
        return
    if range_bytes is None:
        size = os.path.getsize(path)
        range_bytes = max(MIN_RANGE_BYTES, min(MAX_RANGE_BYTES, size // (4 * count) + 1))
    yield from _in_workers(str(Path(path).resolve()), line_ranges(path, range_bytes), count)


def _in_workers(path: str, ranges: list[tuple[int, int]], count: int
                ) -> Iterator[ValidatedLines]:
    """Range ``i`` goes to worker ``i % count``; each worker answers in order, so reading
    the workers round-robin gives the ranges in file order."""
    children: list[Child] = []
    finished = False
    try:
        children = [Child("ingest.jsonl_log", [path], f"JSON-lines worker {i + 1}")
                    for i in range(min(count, len(ranges)))]
        pending = deque(ranges)

        def give(worker: int) -> None:
            if pending:
                children[worker].send(("range", *pending.popleft()))

        for _ in range(_QUEUED_PER_WORKER):
            for worker in range(len(children)):
                give(worker)
        for index in range(len(ranges)):
            worker = index % len(children)
            frames, read, rejected = children[worker].receive(timeout_s=None)[1:]
            give(worker)
            yield ValidatedLines(frames, read, rejected)
        finished = True
    finally:
        for child in children:
            # Done: let each exit on its own. Abandoned midway: no waiting for its queue.
            child.close(("close",) if finished else None)


def _start(conn: Connection, args: list[str]) -> Handler:
    path = args[0]

    def handle(request: tuple[Any, ...]) -> tuple[Any, ...]:
        _, start, end = request
        result = validate_lines(read_lines(path, start, end))
        return ("validated", result.frames, result.read, result.rejected)

    return handle


if __name__ == "__main__":
    serve(_start)

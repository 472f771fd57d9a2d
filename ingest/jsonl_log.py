"""A JSON-lines event log (clickloop's own log format) read into validated frames.

Every line is decoded by the stream's decoder (:mod:`ingest.codec`: the same contract and
the same wording of reasons as the consumer; a clean piece of the log in one call), and the
good events become one frame per type (:func:`ingest.frames.split_events`): Python work for
every line, so a large log is cut into line-aligned byte ranges which worker processes
(:class:`ingest.child.Child`) validate side by side with this one; their frames come back
through shared memory (:mod:`ingest.handoff`) and are yielded in file order, so the replay
is the same as in one process, only sooner (``benchmarks/ingest.py`` times both).

Line numbers count non-blank lines from 1, in one process or many.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import polars as pl

from ingest.child import Child, Handler, close_all, serve
from ingest.codec import decode_batch, decode_lines
from ingest.events import EVENT_TYPES
from ingest.frames import EventFrames, split_events
from ingest.handoff import Handoff, put_frames, take_frames

#: Lines are decoded and turned into columns about this many bytes (some 10,000 events) at
#: a time, so that the event objects of a piece are still in the CPU cache when their
#: columns are read (a whole 32 MB range at once made the column pass markedly slower).
DECODE_BYTES = 2 << 20
#: A log smaller than this is read in one process: a worker's start (an interpreter
#: importing polars) eats what it saves. A 200k-event (41 MB) log replayed at 326k – 347k
#: events/s in two processes against 325k – 370k in one, on 2 cores (``benchmarks/ingest.py
#: --quick --replay-events 200000 --replay-workers 2``, three runs each).
PARALLEL_MIN_BYTES = 64 << 20
#: The most workers :func:`auto_workers` picks.
MAX_AUTO_WORKERS = 8
#: Byte ranges given to workers are at most this large, and small enough that each worker
#: gets about four (so none idles long while the last ones finish).
MAX_RANGE_BYTES = 32 << 20
MIN_RANGE_BYTES = 1 << 20
#: Ranges a child holds at once: one it works on and one queued, so it never waits.
_HELD_PER_CHILD = 2


@dataclass
class ValidatedLines:
    """The outcome of validating consecutive lines of a log."""

    frames: EventFrames
    read: int
    #: (index among these lines, from 0; reason; the line as text) for each rejected line.
    rejected: list[tuple[int, str, str]] = field(default_factory=list)


def validate_text(text: bytes) -> ValidatedLines:
    """Decode and validate the lines of ``text`` (one event each, blank ones skipped) into
    frames of the good events.

    A piece whose lines are all good is decoded in one msgspec call
    (:func:`ingest.codec.decode_lines`), with no line split out; a piece with a bad line is
    split and decoded line by line, to find and word each rejection."""
    parts: list[EventFrames] = []
    rejected: list[tuple[int, str, str]] = []
    read = 0
    view = memoryview(text)
    for start, end in line_cuts(text, DECODE_BYTES):
        events = decode_lines(view[start:end])
        if events is None:
            lines = split_lines(view[start:end])
            decoded, bad = decode_batch(lines)
            rejected += [(read + r.index, r.reason, lines[r.index].decode(errors="replace"))
                         for r in bad]
            events = [e for e in decoded if e is not None] if bad else decoded
            read += len(lines)
        else:
            read += len(events)
        parts.append(split_events(events))
    kinds = [kind for kind in EVENT_TYPES if any(kind in part for part in parts)]
    frames = {kind: pl.concat([part[kind] for part in parts if kind in part])
              for kind in kinds}
    return ValidatedLines(frames, read, rejected)


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
    """:func:`line_cuts` of a file, found without reading more of it than the page after
    each cut."""
    if os.path.getsize(path) == 0:
        return []
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ
                                                ) as mapped:
        return list(line_cuts(mapped, range_bytes))


def read_range(path: str | os.PathLike[str], start: int, end: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(start)
        return handle.read(end - start)


def split_lines(text: bytes | memoryview) -> list[bytes]:
    """The non-blank lines of ``text``, stripped (carriage returns too), split and filtered
    by C-level calls, not a Python loop."""
    return list(filter(None, map(bytes.strip, bytes(text).split(b"\n"))))


def read_ranges(path: str | os.PathLike[str], range_bytes: int = MAX_RANGE_BYTES
                ) -> Iterator[bytes]:
    """The text of a JSON-lines file, a :func:`line_ranges` range at a time (the ranges
    workers get, read the same way)."""
    for start, end in line_ranges(path, range_bytes):
        yield read_range(path, start, end)


def auto_workers(path: str | os.PathLike[str], requested: int = 0) -> int:
    """Processes that validate a log, this one included: ``requested`` if above 0, else
    one per CPU core (at most :data:`MAX_AUTO_WORKERS`) for a log of
    :data:`PARALLEL_MIN_BYTES` or more, and 1 (this one alone) for a smaller one."""
    if requested > 0:
        return requested
    if os.path.getsize(path) < PARALLEL_MIN_BYTES:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), MAX_AUTO_WORKERS))


def validated_batches(path: str | os.PathLike[str], workers: int = 0,
                      range_bytes: int | None = None) -> Iterator[ValidatedLines]:
    """The log validated batch by batch, in file order, by :func:`auto_workers` processes
    (``workers``; 0: automatic): this one and ``workers - 1`` children, each validating
    byte ranges of ``range_bytes`` (default: see :data:`MAX_RANGE_BYTES`)."""
    count = auto_workers(path, workers)
    if count <= 1:
        for text in read_ranges(path):
            yield validate_text(text)
        return
    if range_bytes is None:
        size = os.path.getsize(path)
        range_bytes = max(MIN_RANGE_BYTES, min(MAX_RANGE_BYTES, size // (4 * count) + 1))
    yield from _with_children(str(Path(path).resolve()), line_ranges(path, range_bytes),
                              count - 1)


def _with_children(path: str, ranges: list[tuple[int, int]], count: int
                   ) -> Iterator[ValidatedLines]:
    """Ranges are handed out in file order: two to each of ``count`` children to start with
    (one to work on, one queued), another whenever one answers with a range's index and
    frames. This process validates a range itself whenever the next one due is not ready
    and some are still unassigned: the first one while the children start (an interpreter
    importing polars), later whenever they fall behind, so no core idles while there is
    work. Results are yielded in file order."""
    if not ranges:
        return
    handoff = Handoff()
    children: list[Child] = []
    finished = False
    try:
        children = [Child("ingest.jsonl_log", [path, handoff.directory],
                          f"JSON-lines worker {i + 1}")
                    for i in range(min(count, len(ranges) - 1))]
        holder: dict[int, int] = {}  # range index -> the child validating it
        done: dict[int, ValidatedLines] = {}
        unassigned = 1  # range 0 is this process's

        def give(child: int) -> None:
            nonlocal unassigned
            if unassigned < len(ranges):
                children[child].send(("range", unassigned, *ranges[unassigned]))
                holder[unassigned] = child
                unassigned += 1

        def collect(child: int) -> None:
            index, files, read, rejected = children[child].receive(timeout_s=None)[1:]
            del holder[index]
            done[index] = ValidatedLines(take_frames(files), read, rejected)
            give(child)

        def validate_here(index: int) -> None:
            done[index] = validate_text(read_range(path, *ranges[index]))

        for _ in range(_HELD_PER_CHILD):
            for child in range(len(children)):
                give(child)
        for due in range(len(ranges)):
            while due not in done:
                for child in range(len(children)):
                    if children[child].ready():
                        collect(child)  # keeps every child fed
                if due in done:
                    break
                if due not in holder:  # range 0
                    validate_here(due)
                elif unassigned < len(ranges):
                    unassigned += 1
                    validate_here(unassigned - 1)
                else:
                    collect(holder[due])
            yield done.pop(due)
        finished = True
    finally:
        # Done: let each exit on its own. Abandoned midway: no waiting for its queue.
        close_all(children, ("close",) if finished else None)
        handoff.close()


def _start(conn: Connection, args: list[str]) -> Handler:
    path, directory = args

    def handle(request: tuple[Any, ...]) -> tuple[Any, ...]:
        _, index, start, end = request
        result = validate_text(read_range(path, start, end))
        files = put_frames(directory, str(index), result.frames)
        return ("validated", index, files, result.read, result.rejected)

    return handle


if __name__ == "__main__":
    serve(_start)

"""The event log on disk: parquet files written with polars, one folder per type and date.

Layout::

    ROOT/_checkpoint.json   what is committed: sequence number, offsets, superseded files
    ROOT/_writer.lock       held by the one writer (its pid inside)
    ROOT/click/date=2026-11-23/0000000042.parquet   the clicks of that date in flush 42

A flush writes each file whole (:func:`~ingest.atomic.write_atomic`), then replaces the
checkpoint. Files of a flush that never reached the checkpoint are orphans of a crash: the
writer deletes them when it opens the store and readers never list them, so every
committed event is read exactly once.

Only one :class:`ParquetLogStore` may write to a folder at a time (an exclusive ``flock``
on ``_writer.lock``, released on close or when the process dies); readers take no lock.

A type's newest date may still receive events; its older dates are closed and collect one
file per flush. :func:`compact` rewrites a closed date's files as one file under a new
sequence number, then commits a checkpoint recording that files of that folder numbered
below it are superseded, then deletes them. Readers and orphan removal honour the record,
so a crash at any step leaves each event visible once. A lazy frame planned before a
compaction may find a superseded file gone: scan again.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

import polars as pl

from ingest.atomic import write_atomic
from ingest.events import EVENT_TYPES
from ingest.frames import EventFrames, LogBatch, empty_frame
from ingest.sink import Checkpoint, TopicPartition, conform
from ingest.validation import LINE, validate_batch

log = logging.getLogger(__name__)

CHECKPOINT = "_checkpoint.json"
LOCK = "_writer.lock"
_FILE = re.compile(r"^(\d{10})\.parquet$")


class StoreLocked(RuntimeError):
    """Another writer holds the log store."""

    def __init__(self, root: Path, pid: int | None) -> None:
        holder = f"process {pid}" if pid else "another process"
        super().__init__(f"log store {root} is being written by {holder} "
                         f"(lock {root / LOCK}); one writer at a time")
        self.root, self.pid = root, pid


def _read_checkpoint(root: Path) -> tuple[int, Checkpoint, dict[str, int]]:
    """The last committed sequence number, the offsets, and per folder the number below
    which its files are superseded."""
    try:
        data = json.loads((root / CHECKPOINT).read_text())
    except FileNotFoundError:
        return 0, Checkpoint(None), {}
    offsets = {(t, int(p)): int(o) for t, p, o in data["offsets"]}
    return data["seq"], Checkpoint(data.get("cluster_id"), offsets), data.get("compacted", {})


def _committed_files(root: Path, kind: str, seq: int, compacted: dict[str, int]
                     ) -> list[Path]:
    """``kind``'s files that the checkpoint (``seq``, ``compacted``) covers, oldest first."""
    files = [path for path in (root / kind).glob("date=*/*.parquet")
             if (match := _FILE.match(path.name))
             and compacted.get(f"{kind}/{path.parent.name}", 0) <= int(match[1]) <= seq]
    return sorted(files, key=lambda p: (p.name, p.parent.name))


def scan(root: str | os.PathLike[str], kind: str) -> pl.LazyFrame:
    """Lazily read every committed event of one type (empty frame when there is none)."""
    if kind not in EVENT_TYPES:
        raise ValueError(f"event type {kind!r} is not one of {', '.join(EVENT_TYPES)}")
    seq, _, compacted = _read_checkpoint(Path(root))
    files = _committed_files(Path(root), kind, seq, compacted)
    return pl.scan_parquet(files) if files else empty_frame(kind).lazy()


def scan_all(root: str | os.PathLike[str]) -> dict[str, pl.LazyFrame]:
    return {kind: scan(root, kind) for kind in EVENT_TYPES}


def iter_frames(root: str | os.PathLike[str], batch_rows: int = 500_000
                ) -> Iterator[LogBatch]:
    """The committed events again, validated like any other source, in batches of about
    ``batch_rows`` that cut all types at the same event times (so that a paced replay keeps
    a click after its impression). A rejected event's line is its row (from 1) in its type."""
    frames = {kind: scan(root, kind).collect().with_row_index(LINE, 1).sort("ts")
              for kind in EVENT_TYPES}
    times = pl.concat([frame["ts"] for frame in frames.values()]).sort()
    cuts = [*times.gather_every(batch_rows)[1:], float("inf")]
    starts = dict.fromkeys(frames, 0)
    for cut in cuts:
        batch = {}
        for kind, frame in frames.items():
            end = int(frame["ts"].search_sorted(cut, "left"))
            batch[kind], starts[kind] = frame.slice(starts[kind], end - starts[kind]), end
        yield validate_batch(batch)


class ParquetLogStore:
    """A :class:`~ingest.sink.Sink` that appends events to the parquet log (one writer)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        # A file object, not a bare descriptor: a store dropped without close() releases the
        # lock when it is collected.
        self._lock = open(self.root / LOCK, "a+")  # noqa: SIM115
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            holder = self._lock.read().strip()
            self._lock.close()
            raise StoreLocked(self.root, int(holder) if holder.isdigit() else None) from None
        self._lock.truncate(0)
        self._lock.write(f"{os.getpid()}\n")
        self._lock.flush()
        self._seq, self._checkpoint, self._compacted = _read_checkpoint(self.root)
        if not (self.root / CHECKPOINT).exists():  # a store from its first open, even if empty
            self._commit(0, self._checkpoint, {})
        self._pending: list[tuple[str, pl.DataFrame]] = []
        committed = set(self._files())
        for path in self.root.glob("*/date=*/*"):
            if path not in committed and (path.name.startswith(".") or _FILE.match(path.name)):
                path.unlink()  # an orphan, or a temp file, of a crash

    def _files(self, kind: str | None = None) -> list[Path]:
        return [path for k in ([kind] if kind else EVENT_TYPES)
                for path in _committed_files(self.root, k, self._seq, self._compacted)]

    def _next_seq(self) -> int:
        if self._lock.closed:
            raise ValueError(f"log store {self.root} is closed")
        return self._seq + 1

    def _commit(self, seq: int, checkpoint: Checkpoint, compacted: dict[str, int]) -> None:
        write_atomic(self.root / CHECKPOINT, json.dumps({
            "version": 2,
            "seq": seq,
            "cluster_id": checkpoint.cluster_id,
            "offsets": [[t, p, o] for (t, p), o in sorted(checkpoint.offsets.items())],
            "compacted": compacted,
            "written_at": datetime.now(UTC).isoformat(),
        }).encode())
        self._seq, self._checkpoint, self._compacted = seq, checkpoint, compacted

    def write(self, frames: EventFrames) -> None:
        """Accept validated events as frames in the store's schema."""
        self._pending += [(kind, conform(kind, f)) for kind, f in frames.items() if f.height]

    def flush(self, offsets: dict[TopicPartition, int], cluster_id: str | None) -> None:
        seq = self._next_seq()
        for kind in EVENT_TYPES:
            parts = [frame for k, frame in self._pending if k == kind]
            if not parts:
                continue
            days = pl.concat(parts).with_columns(_day=(pl.col("ts") // 86400).cast(pl.Int64))
            for (day,), part in days.partition_by("_day", as_dict=True,
                                                  maintain_order=True).items():
                date = datetime.fromtimestamp(day * 86400, UTC)
                folder = self.root / kind / f"date={date:%Y-%m-%d}"
                folder.mkdir(parents=True, exist_ok=True)
                write_atomic(folder / f"{seq:010d}.parquet", part.drop("_day").write_parquet)
        checkpoint = self._checkpoint.advanced(cluster_id, offsets)
        if self._pending or checkpoint != self._checkpoint:
            self._commit(seq, checkpoint, self._compacted)
        self._pending = []

    def compact(self) -> dict[str, int]:
        """Rewrite each closed date's committed files as one file (see the module doc).
        Returns, per folder merged (``click/date=2026-11-23``), how many files became one."""
        seq = self._next_seq()
        merged: dict[str, list[Path]] = {}
        for kind in EVENT_TYPES:
            by_folder: dict[Path, list[Path]] = {}
            for path in self._files(kind):
                by_folder.setdefault(path.parent, []).append(path)
            newest = max(by_folder, key=lambda p: p.name, default=None)
            for folder, files in by_folder.items():
                if folder != newest and len(files) > 1:
                    streamed = pl.scan_parquet(files).sink_parquet  # a day may not fit in RAM
                    write_atomic(folder / f"{seq:010d}.parquet", streamed)
                    merged[f"{kind}/{folder.name}"] = files
        if not merged:
            return {}
        self._commit(seq, self._checkpoint, {**self._compacted, **dict.fromkeys(merged, seq)})
        for path in (path for files in merged.values() for path in files):
            path.unlink()
        report = {folder: len(files) for folder, files in merged.items()}
        log.info("compacted %s: %s", self.root, report)
        return report

    def close(self, compact: bool = True) -> None:
        """Compact (unless told not to) and release the store; unflushed frames are dropped
        (see :meth:`ingest.sink.Sink.close`)."""
        try:
            if compact and not self._lock.closed:
                self.compact()
        finally:
            self._lock.close()  # closing the only descriptor releases the flock
            self._pending = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def checkpoint(self) -> Checkpoint:
        return self._checkpoint

    def recent_event_ids(self, limit: int) -> list[str]:
        # Newest flush first; a compacted file merges closed dates, so it counts as oldest.
        merged = {self.root / folder / f"{seq:010d}.parquet"
                  for folder, seq in self._compacted.items()}
        files = sorted(self._files(), key=lambda p: (p not in merged, p.name), reverse=True)
        chunks: list[pl.Series] = []
        for path in files:
            if sum(map(len, chunks)) >= limit:
                break
            chunks.append(pl.read_parquet(path, columns=["event_id"])["event_id"])
        return pl.concat(chunks[::-1]).tail(limit).to_list() if chunks else []

    def count(self) -> dict[str, int]:
        return {kind: scan(self.root, kind).select(pl.len()).collect().item()
                for kind in EVENT_TYPES}


def compact(root: str | os.PathLike[str]) -> dict[str, int]:
    """:meth:`ParquetLogStore.compact` on a store no writer holds (:class:`StoreLocked`
    otherwise)."""
    store = ParquetLogStore(root)
    try:
        return store.compact()
    finally:
        store.close(compact=False)

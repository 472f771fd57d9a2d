"""The event log on disk: parquet files written with polars, one folder per type and date.

Layout::

    ROOT/_checkpoint.json                     what is committed: flush sequence, offsets
    ROOT/click/date=2026-11-23/0000000042.parquet
    ROOT/impression/date=2026-11-23/0000000042.parquet

A flush writes its files under temporary names, renames them, then replaces the checkpoint
(temp file + rename). Files of a flush that never reached the checkpoint are orphans of a
crash: the writer deletes them when it opens the store and readers never list them, so
every committed event is read exactly once.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from ingest.events import EVENT_TYPES, Event
from ingest.frames import SCHEMAS, EventFrames, empty_frame, split_events
from ingest.journal import write_atomic
from ingest.sink import Checkpoint, TopicPartition

CHECKPOINT = "_checkpoint.json"
_FILE = re.compile(r"^(\d{10})\.parquet$")

def _date_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _read_checkpoint(root: Path) -> tuple[int, Checkpoint]:
    path = root / CHECKPOINT
    if not path.exists():
        return 0, Checkpoint(None)
    data = json.loads(path.read_text())
    offsets = {(t, int(p)): int(o) for t, p, o in data["offsets"]}
    return int(data["seq"]), Checkpoint(data.get("cluster_id"), offsets)


def _committed_files(root: Path, kind: str, seq: int) -> list[Path]:
    files = []
    for path in (root / kind).glob("date=*/*.parquet"):
        match = _FILE.match(path.name)
        if match and int(match.group(1)) <= seq:
            files.append(path)
    return sorted(files, key=lambda p: (p.name, p.parent.name))


def scan(root: str | os.PathLike[str], kind: str) -> pl.LazyFrame:
    """Lazily read every committed event of one type (empty frame when there is none)."""
    if kind not in SCHEMAS:
        raise ValueError(f"event type {kind!r} is not one of {', '.join(EVENT_TYPES)}")
    root = Path(root)
    seq, _ = _read_checkpoint(root)
    files = _committed_files(root, kind, seq)
    if not files:
        return empty_frame(kind).lazy()
    return pl.scan_parquet(files)


def scan_all(root: str | os.PathLike[str]) -> dict[str, pl.LazyFrame]:
    return {kind: scan(root, kind) for kind in EVENT_TYPES}


def iter_frames(root: str | os.PathLike[str], batch_rows: int = 500_000
                ) -> Iterator[EventFrames]:
    """The committed events again, a frame of one type at a time, for replay."""
    for kind in EVENT_TYPES:
        frame = scan(root, kind).collect()
        for offset in range(0, frame.height, batch_rows):
            yield {kind: frame.slice(offset, batch_rows)}


class ParquetLogStore:
    """A :class:`~ingest.sink.Sink` that appends events to the parquet log."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._seq, self._checkpoint = _read_checkpoint(self.root)
        self._pending_frames: dict[str, list[pl.DataFrame]] = {k: [] for k in EVENT_TYPES}
        self._remove_orphans()

    def _remove_orphans(self) -> None:
        for path in self.root.glob("*/date=*/*"):
            match = _FILE.match(path.name)
            if path.name.startswith(".") or (match and int(match.group(1)) > self._seq):
                path.unlink()

    def write(self, events: Sequence[Event]) -> None:
        # Columns now, while the batch's objects are fresh in the CPU cache, not at flush.
        self.write_frames(split_events(events))

    def write_frames(self, frames: EventFrames) -> None:
        """Accept already-validated events as frames in the store's schema."""
        for kind, frame in frames.items():
            if frame.height:
                self._pending_frames[kind].append(frame.select(list(SCHEMAS[kind])))

    def _frame_to_flush(self, kind: str) -> pl.DataFrame | None:
        parts = self._pending_frames[kind]
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else pl.concat(parts)

    def flush(self, offsets: dict[TopicPartition, int], cluster_id: str | None) -> None:
        seq = self._seq + 1
        written = []
        for kind in EVENT_TYPES:
            frame = self._frame_to_flush(kind)
            if frame is None:
                continue
            frame = frame.with_columns(_day=(pl.col("ts") // 86400).cast(pl.Int64))
            for (day,), part in frame.partition_by("_day", as_dict=True,
                                                   maintain_order=True).items():
                folder = self.root / kind / f"date={_date_of(float(day) * 86400)}"
                folder.mkdir(parents=True, exist_ok=True)
                target = folder / f"{seq:010d}.parquet"
                tmp = folder / f".{target.name}.tmp"
                part.drop("_day").write_parquet(tmp, compression="zstd", statistics=True)
                with open(tmp, "rb+") as handle:
                    os.fsync(handle.fileno())
                written.append((tmp, target))
        for tmp, target in written:
            os.replace(tmp, target)
        checkpoint = self._checkpoint.advanced(cluster_id, offsets)
        if written or checkpoint != self._checkpoint:
            write_atomic(self.root / CHECKPOINT, json.dumps({
                "version": 1,
                "seq": seq,
                "cluster_id": checkpoint.cluster_id,
                "offsets": [[t, p, o] for (t, p), o in sorted(checkpoint.offsets.items())],
                "written_at": datetime.now(UTC).isoformat(),
            }).encode())
            self._seq, self._checkpoint = seq, checkpoint
        self._pending_frames = {kind: [] for kind in EVENT_TYPES}

    def checkpoint(self) -> Checkpoint:
        return self._checkpoint

    def recent_event_ids(self, limit: int) -> list[str]:
        files = [f for kind in EVENT_TYPES for f in _committed_files(self.root, kind, self._seq)]
        files.sort(key=lambda p: p.name, reverse=True)
        chunks: list[list[str]] = []
        total = 0
        for path in files:
            if total >= limit:
                break
            ids = pl.read_parquet(path, columns=["event_id"])["event_id"].to_list()
            chunks.append(ids)
            total += len(ids)
        ordered = [i for chunk in reversed(chunks) for i in chunk]
        return ordered[-limit:]

    def count(self) -> dict[str, int]:
        return {kind: scan(self.root, kind).select(pl.len()).collect().item()
                for kind in EVENT_TYPES}

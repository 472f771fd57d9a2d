"""An append-only, bounded, crash-safe local journal of outgoing messages.

The producer spools here what the broker did not acknowledge, and drains it oldest first,
each record to the topic and cluster (bootstrap address) it names. A record is framed as
``crc32(4) | length(4) | msgpack [topic, cluster, key, value, headers]``, the CRC covering
the length and the body: a torn append at the end is cut off on open, while a bad record
with data after it is corruption, reported and never cut. The drain position is kept in a
side file written atomically, so a restart resumes the drain.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import struct
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

import msgspec

from ingest.atomic import write_atomic

#: The data file; the position file sits beside it.
DATA_FILE = "records.bin"
_FRAME = struct.Struct("<II")
Headers = list[tuple[str, bytes]]
#: (key, value, headers) of one message.
Record = tuple[bytes | None, bytes, Headers | None]


class Entry(NamedTuple):
    """One journaled message and where it was going."""

    topic: str
    cluster: str
    key: bytes | None
    value: bytes
    headers: Headers | None


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Entry).decode


class JournalError(RuntimeError):
    """A journal that cannot be used as asked; the message names it and says why."""


class JournalFull(JournalError):
    """The journal reached its size bound; the caller must stop accepting events."""


class JournalLocked(JournalError):
    """Another process holds the journal."""


def journal_folder(root: str | os.PathLike[str], cluster: str) -> Path:
    """The folder under ``root`` of the journal for ``cluster``; the hash keeps apart two
    addresses that read alike once made safe for a file name."""
    safe = re.sub(r"[^A-Za-z0-9.-]", "_", cluster)
    return Path(root) / f"{safe}-{zlib.crc32(cluster.encode()):08x}"


def journal_folders(root: str | os.PathLike[str]) -> list[Path]:
    """Every journal folder under ``root`` (a producer's and its DLQ's, for any cluster)."""
    return sorted({path.parent for path in Path(root).rglob(DATA_FILE)})


def _frame(entry: Entry) -> bytes:
    body = _encode(entry)
    sized = struct.pack("<I", len(body)) + body
    return struct.pack("<I", zlib.crc32(sized)) + sized


def _read(handle: BinaryIO) -> Entry | None:
    """The next entry; None at the end or at a torn or corrupt one."""
    header = handle.read(_FRAME.size)
    if len(header) < _FRAME.size:
        return None
    crc, size = _FRAME.unpack(header)
    body = handle.read(size)
    if len(body) < size or zlib.crc32(body, zlib.crc32(header[4:])) != crc:
        return None
    return _decode(body)


def open_journal(root: str | os.PathLike[str], cluster: str, max_bytes: int) -> Journal:
    """This process's journal for ``cluster``: the cluster's folder under ``root``, or its
    first sibling (``folder.1``, ...) that no other process holds."""
    base = journal_folder(root, cluster)
    for n in itertools.count():
        try:
            return Journal(base.with_name(f"{base.name}.{n}") if n else base, max_bytes, cluster)
        except JournalLocked:
            continue


class Journal:
    """Records waiting for the broker, oldest first, held by one process at a time (a
    ``flock``, released on close or at exit). With ``cluster``, opening fails if a record is
    for another cluster (a producer must never send it there); without it (``clickloop
    drain``, ``clickloop status``) any journal opens."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int,
                 cluster: str | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._data = self.directory / DATA_FILE
        self._position_file = self._data.with_suffix(".pos")
        self._lock = open(self.directory / "lock", "a+")  # noqa: SIM115 - held until close
        try:
            self._open(cluster)
        except BaseException:
            self._lock.close()
            raise

    def _open(self, cluster: str | None) -> None:
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            holder = self._lock.read().strip() or "another process"
            raise JournalLocked(f"journal {self.directory} is in use by process {holder}") from None
        self._lock.truncate(0)
        self._lock.write(str(os.getpid()))
        self._lock.flush()
        try:
            position = int(self._position_file.read_text() if self._position_file.exists() else 0)
        except ValueError:
            raise JournalError(f"journal position file {self._position_file} is corrupt: "
                               f"{self._position_file.read_text()[:40]!r}") from None
        #: Records appended and not yet drained.
        self.pending = 0
        end = 0
        if self._data.exists():
            with open(self._data, "r+b") as handle:
                while (entry := _read(handle)) is not None:
                    if cluster is not None and entry.cluster != cluster:
                        raise JournalError(
                            f"journal {self.directory} holds records for cluster="
                            f"{entry.cluster!r}, not cluster={cluster!r}; send them with "
                            "`clickloop drain`")
                    end = handle.tell()
                    self.pending += end > position
                handle.seek(end)
                tail = handle.read()
                header = _FRAME.unpack(tail[:_FRAME.size]) if len(tail) >= _FRAME.size else None
                # A torn append ends the file early (or in zeros); anything else is damage.
                if header and _FRAME.size + header[1] <= len(tail) and tail.strip(b"\0"):
                    raise JournalError(
                        f"journal {self._data} is corrupt at byte {end} ({len(tail):,} bytes "
                        f"from there on); the {self.pending:,} records before it are intact")
                handle.truncate(end)
        self._position = min(position, end)

    def close(self) -> None:
        """Release the journal to other processes."""
        self._lock.close()

    @property
    def size_bytes(self) -> int:
        return self._data.stat().st_size if self._data.exists() else 0

    def append(self, entries: Sequence[Entry]) -> None:
        """Append all entries durably, or none of them if that would pass ``max_bytes``."""
        blob = b"".join(map(_frame, entries))
        if self.size_bytes + len(blob) > self.max_bytes:
            raise JournalFull(
                f"journal {self._data} holds {self.size_bytes} bytes and {self.pending} "
                f"undelivered records; {len(entries)} more ({len(blob)} bytes) would pass "
                f"journal_max_bytes={self.max_bytes}. The broker has been unreachable too "
                "long: refusing new events rather than dropping any.")
        self._write(blob, len(entries))

    def _write(self, blob: bytes, count: int) -> None:
        with open(self._data, "ab") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        self.pending += count

    def entries(self) -> Iterator[Entry]:
        """The undelivered records, oldest first."""
        if self.pending:
            with open(self._data, "rb") as handle:
                handle.seek(self._position)
                yield from iter(lambda: _read(handle), None)

    def peek(self, max_records: int) -> list[Entry]:
        """The oldest undelivered records, at most ``max_records`` of them."""
        return list(itertools.islice(self.entries(), max_records))

    def advance(self, count: int, requeue: Sequence[Entry] = ()) -> None:
        """Mark the ``count`` oldest undelivered records as delivered, after appending
        ``requeue`` (those of them that failed) at the end, so that a record the broker keeps
        refusing holds up no other. Requeued records are already counted in the size bound."""
        if requeue:
            self._write(b"".join(map(_frame, requeue)), len(requeue))
        with open(self._data, "rb") as handle:
            handle.seek(self._position)
            for _ in range(count):
                _read(handle)
            self._position = handle.tell()
        self.pending -= count
        if 2 * self._position < self.size_bytes:
            write_atomic(self._position_file, str(self._position).encode())
            return
        # Mostly drained: keep only what waits, so the size bound counts only that. The position
        # goes back to 0 first: a crash in between sends delivered records again, skips none.
        rest = self._data.read_bytes()[self._position:]
        self._position_file.unlink(missing_ok=True)
        self._position = 0
        if rest:
            write_atomic(self._data, rest)
        else:
            self._data.unlink()

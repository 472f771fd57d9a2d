"""An append-only, bounded, crash-safe local journal of outgoing messages.

The producer spools here whatever the broker did not acknowledge and drains it, oldest
first, when the broker is back. Each record is framed as::

    crc32(4) | key length(4, 0xFFFFFFFF = no key) | value length(4) | headers length(4)
    | key | value | headers (msgpack list of [name, bytes])

A torn write at the end (a crash mid-append) fails the CRC or the length check and is cut
off when the journal is opened. How far the journal has been drained is kept in a side file
written atomically, so a restart resumes the drain instead of starting it over.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import msgspec

_HEADER = struct.Struct("<IIII")
_NO_KEY = 0xFFFFFFFF
Headers = list[tuple[str, bytes]]
#: (key, value, headers) of one message.
Record = tuple[bytes | None, bytes, Headers | None]
_headers_encoder = msgspec.msgpack.Encoder()
_headers_decoder = msgspec.msgpack.Decoder(list[tuple[str, bytes]])


def _body_length(key_len: int, value_len: int, headers_len: int) -> int:
    return (0 if key_len == _NO_KEY else key_len) + value_len + headers_len


class JournalFull(RuntimeError):
    """The journal reached its size bound; the caller must stop accepting events."""


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class Journal:
    """Records waiting for the broker, in the order they were appended."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._data = self.directory / "journal.bin"
        self._position_file = self.directory / "journal.pos"
        self._position = 0
        self._pending = 0
        self._recover()

    def _recover(self) -> None:
        if self._position_file.exists():
            self._position = int(self._position_file.read_text() or 0)
        if not self._data.exists():
            self._position = 0
            return
        valid_end, count = 0, 0
        with open(self._data, "rb") as handle:
            data = handle.read()
        cursor = 0
        while cursor + _HEADER.size <= len(data):
            crc, key_len, value_len, headers_len = _HEADER.unpack_from(data, cursor)
            end = cursor + _HEADER.size + _body_length(key_len, value_len, headers_len)
            if end > len(data) or zlib.crc32(data[cursor + 4: end]) != crc:
                break
            cursor = end
            valid_end = end
            if cursor > self._position:
                count += 1
        if valid_end < len(data):
            with open(self._data, "r+b") as handle:
                handle.truncate(valid_end)
        self._position = min(self._position, valid_end)
        self._pending = count

    @property
    def pending(self) -> int:
        """Records appended and not yet drained."""
        return self._pending

    @property
    def size_bytes(self) -> int:
        return self._data.stat().st_size if self._data.exists() else 0

    def append(self, records: Sequence[Record]) -> None:
        """Append all records durably, or none of them if that would pass ``max_bytes``."""
        if not records:
            return
        chunks = []
        for key, value, headers in records:
            key_len = _NO_KEY if key is None else len(key)
            encoded = _headers_encoder.encode(headers) if headers else b""
            body = (_HEADER.pack(0, key_len, len(value), len(encoded))[4:]
                    + (key or b"") + value + encoded)
            chunks.append(struct.pack("<I", zlib.crc32(body)) + body)
        blob = b"".join(chunks)
        size = self.size_bytes
        if size + len(blob) > self.max_bytes:
            raise JournalFull(
                f"journal {self._data} holds {size} bytes and {self._pending} undelivered "
                f"records; {len(records)} more ({len(blob)} bytes) would pass "
                f"journal_max_bytes={self.max_bytes}. The broker has been unreachable too "
                "long: refusing new events rather than dropping any."
            )
        with open(self._data, "ab") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        self._pending += len(records)

    def peek(self, max_records: int) -> list[Record]:
        """The oldest undelivered records, at most ``max_records`` of them."""
        if not self._pending:
            return []
        records: list[Record] = []
        with open(self._data, "rb") as handle:
            handle.seek(self._position)
            while len(records) < max_records:
                header = handle.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    break
                _, key_len, value_len, headers_len = _HEADER.unpack(header)
                key = None if key_len == _NO_KEY else handle.read(key_len)
                value = handle.read(value_len)
                headers = _headers_decoder.decode(handle.read(headers_len)) if headers_len else None
                records.append((key, value, headers))
        return records

    def advance(self, count: int) -> None:
        """Mark the ``count`` oldest undelivered records as delivered."""
        with open(self._data, "rb") as handle:
            handle.seek(self._position)
            for _ in range(count):
                _, key_len, value_len, headers_len = _HEADER.unpack(handle.read(_HEADER.size))
                handle.seek(_body_length(key_len, value_len, headers_len), os.SEEK_CUR)
            self._position = handle.tell()
        self._pending -= count
        if self._pending == 0:
            # Fully drained: start a fresh file so the size bound counts only what waits.
            self._data.unlink(missing_ok=True)
            self._position_file.unlink(missing_ok=True)
            self._position = 0
        else:
            write_atomic(self._position_file, str(self._position).encode())

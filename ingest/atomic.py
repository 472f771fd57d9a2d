"""Files replaced whole: a reader, or a process restarted after a crash, sees the old
contents or the new, never a mix."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: Path, data: bytes | Callable[[Path], object]) -> None:
    """Replace ``path`` with ``data``, or with what ``data(temp_path)`` writes, via a temp
    file (named with a leading dot) and a rename, both synced to disk."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if callable(data):
        data(tmp)
    else:
        tmp.write_bytes(data)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    # The rename survives a power loss, not only a crash, once the folder is synced too.
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)

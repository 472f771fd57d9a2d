"""Frames handed from a worker process to its parent as Arrow IPC files in shared memory.

A frame pickled over the worker's pipe is serialized, written to the pipe in pieces, read
back into a growing buffer and deserialized: several copies on both sides. An uncompressed
Arrow IPC file in ``/dev/shm`` (memory, not disk) is one write and one read, in the frame's
own layout.

Each parent owns one directory (:class:`Handoff`), removed with whatever is left in it when
the parent is done. The directory's name carries the parent's pid, so a parent killed
before it could clean up is swept by the next one (:func:`sweep_stale`).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import polars as pl

from ingest.frames import EventFrames

_PREFIX = "clickloop-handoff-"
_OWNER = re.compile(re.escape(_PREFIX) + r"(\d+)-")


#: ``/dev/shm`` is used only with this much free: a container's is often 64 MB, less than
#: the frames of a few ranges in transit (a 32 MB range of JSON lines is about 20 MB).
MIN_SHARED_MEMORY_FREE = 1 << 30


def shared_memory_root(min_free_bytes: int = MIN_SHARED_MEMORY_FREE) -> str | None:
    """``/dev/shm`` where it can be written to and has ``min_free_bytes`` free, else
    ``None`` (the usual temporary folder: the page cache, written back to disk later)."""
    root = "/dev/shm"
    if not (os.path.isdir(root) and os.access(root, os.W_OK | os.X_OK)):
        return None
    stats = os.statvfs(root)
    return root if stats.f_bavail * stats.f_frsize >= min_free_bytes else None


def sweep_stale(root: str | os.PathLike[str]) -> list[Path]:
    """Remove the handoff directories under ``root`` whose parent process is gone; returns
    them."""
    removed = []
    for entry in Path(root).iterdir():
        owner = _OWNER.match(entry.name)
        if owner and entry.is_dir() and not _alive(int(owner.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, and somebody else's
        pass
    return True


class Handoff:
    """One parent's directory of frames in transit. Workers :func:`put_frames` into
    :attr:`directory`; the parent :func:`take_frames`."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        root = shared_memory_root() if root is None else root
        sweep_stale(root or tempfile.gettempdir())
        self.directory = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=root)

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Handoff:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def put_frames(directory: str, name: str, frames: EventFrames) -> dict[str, str]:
    """Write each frame to ``directory`` as ``{name}-{kind}.arrow``; returns the files by
    kind (what the worker sends back instead of the frames)."""
    files = {}
    for kind, frame in frames.items():
        files[kind] = os.path.join(directory, f"{name}-{kind}.arrow")
        frame.write_ipc(files[kind], compression="uncompressed")
    return files


def take_frames(files: dict[str, str]) -> EventFrames:
    """Read the frames :func:`put_frames` wrote, and delete their files."""
    frames = {kind: pl.read_ipc(file) for kind, file in files.items()}
    for file in files.values():
        os.unlink(file)
    return frames

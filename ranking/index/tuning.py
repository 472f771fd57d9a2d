"""Self-tuning build: pick the structure and its search parameter from a recall target.

Small collections (``n <= FLAT_MAX``) get exact ``Flat``: at 20k vectors one query costs 20k
dot products, well under a millisecond, and an approximate structure would pay training and lose
recall for little gain. Larger ones try IVF (Jegou, Douze, Schmid, "Product quantization for
nearest neighbor search", TPAMI 2011) with ``nlist ~ 4 sqrt(n)`` and HNSW32 (Malkov & Yashunin,
"Efficient and robust approximate nearest neighbor search using hierarchical navigable small
world graphs", TPAMI 2018), both in FAISS (Johnson, Douze, Jegou, "Billion-scale similarity
search with GPUs", 2019). For each, ``nprobe`` (1, 2, 4, ...) or ``efSearch`` (16, 32, ...) rises
until recall@k against exact search on a held-out sample (the collection's own vectors, slightly
perturbed) meets the target; among candidates that meet it the one with the highest measured
queries/s on the sample wins. If none does, exact ``Flat`` is used. The choice is recorded in
``operating_point`` and saved in the metadata.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np

from ranking.index.validation import IndexInputError, check_ids, check_vectors
from ranking.index.vector_index import VectorIndex

FLAT_MAX = 20_000
SAMPLE = 300
NOISE = 0.05
MAX_EF = 4096


def ivf_nlist(n: int) -> int:
    """The IVF list count for ``n`` vectors: about 4 sqrt(n), at least 39 points a list."""
    return int(max(1, min(65_536, round(4 * math.sqrt(n)), n // 39)))


def perturbed_sample(vectors: np.ndarray, size: int, noise: float, seed: int) -> np.ndarray:
    """``size`` of the rows, with gaussian noise of total norm about ``noise``, normalized."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vectors), size=min(size, len(vectors)), replace=False)
    sample = vectors[rows] + rng.normal(0, noise / math.sqrt(vectors.shape[1]),
                                        (len(rows), vectors.shape[1])).astype(np.float32)
    return check_vectors(sample, vectors.shape[1], field="sample")


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each exact top-k row found by the approximate search."""
    hits = [len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) for f, t in zip(found, truth)]
    return float(np.sum(hits) / max(1, (truth >= 0).sum()))


def _timed(index: faiss.Index, q: np.ndarray, k: int, params: Any) -> tuple[np.ndarray, float]:
    best, labels = math.inf, None
    for _ in range(2):
        t0 = time.perf_counter()
        _, labels = index.search(q, k, params=params)
        best = min(best, time.perf_counter() - t0)
    return labels, len(q) / max(best, 1e-9)


def _tune(index: faiss.Index, structure: str, q: np.ndarray, truth: np.ndarray, k: int,
          target: float, fixed: int | None) -> dict[str, Any]:
    """Raise the search parameter until recall@k >= target; the measured operating point."""
    if faiss.try_extract_index_ivf(index) is not None:
        name, cap = "nprobe", int(faiss.extract_index_ivf(index).nlist)
        ladder = [fixed] if fixed else [min(2**i, cap) for i in range(cap.bit_length() + 1)]
        make = lambda v: faiss.SearchParametersIVF(nprobe=v)  # noqa: E731
    elif structure.startswith("HNSW"):
        name, cap = "efSearch", MAX_EF
        ladder = [fixed] if fixed else [16 * 2**i for i in range(9)]
        make = lambda v: faiss.SearchParametersHNSW(efSearch=v)  # noqa: E731
    else:
        labels, qps = _timed(index, q, k, None)
        return {"structure": structure, "param": None, "search_param": None,
                "recall": recall_at_k(labels, truth), "qps": qps}
    point: dict[str, Any] = {}
    for value in dict.fromkeys(ladder):
        labels, qps = _timed(index, q, k, make(value))
        point = {"structure": structure, "param": name, "search_param": int(value),
                 "recall": recall_at_k(labels, truth), "qps": qps}
        if point["recall"] >= target:
            break
    return point


def _fill(index: faiss.Index, x: np.ndarray, seed: int) -> None:
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        ivf = faiss.try_extract_index_ivf(index)
        cap = 64 * int(ivf.nlist) if ivf is not None else 100_000
        rows = rng.choice(len(x), size=min(len(x), cap), replace=False)
        index.train(x[np.sort(rows)])
    index.add_with_ids(x, np.arange(len(x), dtype=np.int64))


def build(ids: Sequence[str], vectors: Any, *, model: str, recall_target: float = 0.95,
          k: int = 100, structure: str | None = None, search_param: int | None = None,
          seed: int = 0, device: str = "cpu") -> VectorIndex:
    """A :class:`VectorIndex` over ``ids``/``vectors`` with a measured operating point.

    ``structure`` (``"Flat"``, ``"IVF1024,Flat"``, ``"HNSW32"``, any FAISS factory string) and
    ``search_param`` (``nprobe``/``efSearch``) override the automatic choice.
    """
    names = check_ids(ids)
    if not names:
        raise IndexInputError("ids=[] must not be empty")
    arr = np.asarray(vectors)
    if arr.ndim != 2:
        raise IndexInputError(f"vectors.shape={arr.shape} must be 2-D (n, dim)")
    x = check_vectors(arr, arr.shape[1], rows=len(names))
    if not 0 < recall_target <= 1:
        raise IndexInputError(f"recall_target={recall_target!r} must be in (0, 1]")
    n, dim = x.shape
    k_eval = min(k, n)
    if structure is None:
        structures = ["Flat"] if n <= FLAT_MAX else [f"IVF{ivf_nlist(n)},Flat", "HNSW32"]
    else:
        structures = [structure]
    q = perturbed_sample(x, SAMPLE, NOISE, seed)
    exact = faiss.IndexFlatIP(dim)
    exact.add(x)
    _, truth = exact.search(q, k_eval)
    candidates: list[tuple[dict[str, Any], VectorIndex]] = []
    for s in structures:
        vi = VectorIndex(dim, model=model, structure=s, device="cpu")
        _fill(vi.index, x, seed)
        point = _tune(vi.index, s, q, truth, k_eval, recall_target, search_param)
        candidates.append((point, vi))
    meeting = [c for c in candidates if c[0]["recall"] >= recall_target]
    if meeting:
        point, chosen = max(meeting, key=lambda c: c[0]["qps"])
    elif structure is not None:
        point, chosen = candidates[0]
    else:
        chosen = VectorIndex(dim, model=model, structure="Flat", device="cpu")
        _fill(chosen.index, x, seed)
        point = _tune(chosen.index, "Flat", q, truth, k_eval, recall_target, None)
    op = dict(point, k=k_eval, recall_target=recall_target, sample=len(q), noise=NOISE,
              seed=seed, n=n, candidates=[c[0] for c in candidates])
    result = VectorIndex(dim, model=model, structure=point["structure"],
                         search_param=point["search_param"], device=device,
                         faiss_index=chosen.index, operating_point=op)
    result.restore_ids({"ids": names, "int_ids": list(range(n)), "next_id": n})
    return result

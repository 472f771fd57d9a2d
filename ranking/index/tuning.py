"""Self-tuning build: pick the structure and its search parameter from a recall target.

Structures, all in FAISS (Johnson, Douze, Jegou, "Billion-scale similarity search with GPUs",
IEEE Trans. Big Data, 2019):

- exact ``Flat`` for small collections (``n <= FLAT_MAX``): one query costs ``n`` dot products,
  cheap at that size, and an approximate structure would pay training and lose recall for
  little gain;
- IVF (Jegou, Douze, Schmid, "Product quantization for nearest neighbor search", TPAMI 2011),
  the vectors stored in full (``IVF{nlist},Flat``), first with ``sqrt(n)`` lists, then with
  twice as many (``IVF_FACTORS``) for as long as the measured queries/s at the target
  improves. A query costs ``nlist`` centroid products plus the entries of the ``nprobe``
  lists it scans; finer lists fit a neighbourhood more tightly but cost more centroids, so
  the best count depends on how many probes the data needs, which only measurement tells.
  (The usual FAISS rule of 4 to 16 sqrt(n) assumes a fast approximate centroid search.);
- HNSW32 (Malkov & Yashunin, "Efficient and robust approximate nearest neighbor search using
  hierarchical navigable small world graphs", TPAMI 2018), only for ``n <= HNSW_MAX``;
- IVF-PQ (``IVF{nlist},PQ{m}``, same paper as IVF, ``nlist = ivf_nlist(n)``, about
  4 sqrt(n)) when a memory budget rules out the full vectors.

Each candidate's search parameter, ``nprobe`` (1, 2, 4, ...) or ``efSearch`` (16, 32, ...),
rises until recall@k against exact search on a held-out sample (the collection's own vectors,
slightly perturbed) meets the target, or stops rising when recall no longer improves (a
quantized structure plateaus below exact). Among candidates that meet the target the one with
the highest measured queries/s on the sample wins; the choice is recorded in
``operating_point`` (``choice`` reads like ``"IVF4000,Flat nprobe=8"``) and saved in the
metadata.

Memory. ``memory_budget_mb`` (MiB, 2**20 bytes) drops every candidate whose estimated stored
size (what ``faiss.serialize_index`` writes) exceeds it, before it is built: full vectors cost
``4 dim`` bytes each plus an int64 id, HNSW adds its graph links (about ``2M + 1`` int32
neighbours per vector), IVF adds its centroids, IVF-PQ stores ``m`` one-byte codes per vector
plus its ids, centroids and codebooks. ``m`` is the largest divisor of ``dim`` (at most
``dim / 2``) whose codes fit the budget. A re-ranking refine over the PQ shortlist
(``IndexRefineFlat``) keeps every full vector besides the codes, so whenever it fits the
budget the plain ``IVF,Flat`` fits too and reaches any recall: it is never a candidate. If no
candidate within the budget meets the recall target, the one with the best recall is chosen
and the operating point says so (``target_met: false`` and a ``note``; a warning is logged);
exact ``Flat`` is the fallback only where it fits. A budget too small for the ids and
one-byte codes is an error.

Build cost, which decides what is tried on a small machine:

- k-means for the IVF centroids trains on ``TRAIN_PER_LIST`` sampled vectors per list (just
  above the 39 below which FAISS warns that the centroids are poorly estimated; more samples
  cost training time in proportion), at
  least ``PQ_TRAIN_MIN`` when PQ codebooks (256 centroids each) are trained on the same
  sample (and the codebooks subsample to as many per code). Adding the vectors (assigning
  each to its nearest centroid) then dominates the build and grows with ``n * nlist``: the
  list count climbs from the cheapest rung and stops at the first that does not pay.
- An HNSW graph build inserts each vector by a beam search over the graph built so far, which
  costs several times an IVF build of the same collection. It is tried only up to
  ``HNSW_MAX`` vectors, where its build is still short in absolute terms and it can win on
  data that suits IVF less; above that only IVF structures are built.
  ``structure="HNSW32"`` still builds one at any size.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np

from ranking.index.validation import (
    IndexInputError,
    check_ids,
    check_positive_int,
    check_vectors,
)
from ranking.index.vector_index import VectorIndex

log = logging.getLogger(__name__)

FLAT_MAX = 20_000
HNSW_MAX = 100_000
HNSW_M = 32
TRAIN_PER_LIST = 40
PQ_TRAIN_MIN = 256 * TRAIN_PER_LIST
SAMPLE = 300
NOISE = 0.05
MAX_EF = 4096
MIB = 2**20
ID_BYTES = 8  # one int64 id per vector: the IVF lists' ids or IndexIDMap2's table
PLATEAU = 0.002  # a step of the ladder that gains less recall than this ends the ladder
IVF_FACTORS = (1.0, 2.0, 4.0, 8.0)  # the list counts tried, in units of sqrt(n)


def ivf_nlist(n: int, factor: float = 4.0) -> int:
    """The IVF list count for ``n`` vectors: about ``factor`` sqrt(n), at least 39 points a
    list."""
    return int(max(1, min(65_536, round(factor * math.sqrt(n)), n // 39)))


def estimate_memory_bytes(structure: str, n: int, dim: int) -> int | None:
    """Stored size of ``structure`` holding ``n`` vectors of ``dim`` (None if not modelled).

    Models ``Flat``, ``HNSW{M}``, ``IVF{nlist},Flat`` and ``IVF{nlist},PQ{m}`` (8-bit codes).
    """
    vector, ids = 4 * dim * n, ID_BYTES * n
    if structure == "Flat":
        return vector + ids
    if m := re.fullmatch(r"HNSW(\d+)", structure):
        links = 4 * (2 * int(m.group(1)) + 1) + 4 + 8  # neighbours, level, offset per vector
        return vector + ids + links * n
    if m := re.fullmatch(r"IVF(\d+),Flat", structure):
        return vector + ids + 4 * dim * int(m.group(1))
    if m := re.fullmatch(r"IVF(\d+),PQ(\d+)(x8)?(np)?", structure):
        return (int(m.group(2)) + ID_BYTES) * n + 4 * dim * int(m.group(1)) + 4 * 256 * dim
    return None


def pq_m_for_budget(n: int, dim: int, nlist: int, budget_bytes: float) -> int | None:
    """The largest PQ code size ``m`` (bytes per vector, dividing ``dim``, at most ``dim / 2``)
    whose ``IVF{nlist},PQ{m}`` fits ``budget_bytes``; None if not even ``m = 1`` fits."""
    fixed = 4 * dim * nlist + 4 * 256 * dim
    per_vector = (budget_bytes - fixed) / max(1, n) - ID_BYTES
    fits = [m for m in range(1, max(1, dim // 2) + 1) if dim % m == 0 and m <= per_vector]
    return max(fits) if fits else None


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


def choice_string(structure: str, param: str | None, value: int | None) -> str:
    """``"IVF4000,Flat nprobe=8"``, ``"HNSW32 efSearch=64"`` or ``"Flat"``."""
    return structure if param is None else f"{structure} {param}={value}"


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
                "choice": structure, "recall": recall_at_k(labels, truth), "qps": qps}
    point: dict[str, Any] = {}
    for value in dict.fromkeys(ladder):
        labels, qps = _timed(index, q, k, make(value))
        previous = point.get("recall", -1.0)
        point = {"structure": structure, "param": name, "search_param": int(value),
                 "choice": choice_string(structure, name, int(value)),
                 "recall": recall_at_k(labels, truth), "qps": qps}
        # A quantized structure plateaus below exact recall: wider search only costs time.
        if point["recall"] >= target or point["recall"] - previous < PLATEAU:
            break
    return point


def fill_index(index: faiss.Index, x: np.ndarray, seed: int) -> None:
    """Train ``index`` as the tuner does (sampled rows, see the module docstring) and add ``x``
    under the int64 ids ``0 .. n-1``."""
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        ivf = faiss.try_extract_index_ivf(index)
        ivf = faiss.downcast_index(ivf) if ivf is not None else None
        cap = TRAIN_PER_LIST * int(ivf.nlist) if ivf is not None else 100_000
        if isinstance(ivf, faiss.IndexIVFPQ):
            cap = max(cap, PQ_TRAIN_MIN)
            # Polysemous training (which the factory turns on) only serves Hamming-filtered
            # search, which is never used here, and it dominates the build.
            ivf.do_polysemous_training = False
            # Codebook k-means subsamples to this many points per centroid (256 by default):
            # the same rule as the lists', and the sub-quantizers' training stays short.
            ivf.pq.cp.max_points_per_centroid = TRAIN_PER_LIST
        rows = rng.choice(len(x), size=min(len(x), cap), replace=False)
        index.train(x[np.sort(rows)])
    index.add_with_ids(x, np.arange(len(x), dtype=np.int64))


def _structures(n: int, dim: int, budget_bytes: float | None) -> list[str]:
    """The automatic candidates for ``n`` vectors within ``budget_bytes`` (None: no limit)."""
    fits = lambda s: budget_bytes is None or estimate_memory_bytes(s, n, dim) <= budget_bytes  # noqa: E731
    if n <= FLAT_MAX and fits("Flat"):
        return ["Flat"]
    nlist = ivf_nlist(n, IVF_FACTORS[0])
    full = [f"IVF{nlist},Flat"] + ([f"HNSW{HNSW_M}"] if n <= HNSW_MAX else [])
    out = [s for s in full if fits(s)]
    if budget_bytes is not None and not fits(f"IVF{nlist},Flat") and n >= PQ_TRAIN_MIN:
        nlist = ivf_nlist(n)
        m = pq_m_for_budget(n, dim, nlist, budget_bytes)
        if m is not None:
            out.append(f"IVF{nlist},PQ{m}")
    return out


def build(ids: Sequence[str], vectors: Any, *, model: str, recall_target: float = 0.95,
          k: int = 100, structure: str | None = None, search_param: int | None = None,
          seed: int = 0, device: str = "cpu",
          memory_budget_mb: float | None = None) -> VectorIndex:
    """A :class:`VectorIndex` over ``ids``/``vectors`` with a measured operating point.

    ``structure`` (``"Flat"``, ``"IVF1024,Flat"``, ``"HNSW32"``, any FAISS factory string) and
    ``search_param`` (``nprobe``/``efSearch``) override the automatic choice.
    ``memory_budget_mb`` (MiB) limits the automatic choice to structures whose estimated stored
    size fits; the operating point records ``memory_mb`` and whether the target was met.
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
    check_positive_int(k, "k")
    if search_param is not None:
        check_positive_int(search_param, "search_param")
    if memory_budget_mb is not None and not memory_budget_mb > 0:
        raise IndexInputError(f"memory_budget_mb={memory_budget_mb!r} must be positive")
    n, dim = x.shape
    k_eval = min(k, n)
    budget = None if memory_budget_mb is None else memory_budget_mb * MIB
    if structure is None:
        structures = _structures(n, dim, budget)
        if not structures:
            flat = estimate_memory_bytes("Flat", n, dim) / MIB
            codes = (1 + ID_BYTES) * n / MIB
            raise IndexInputError(
                f"memory_budget_mb={memory_budget_mb!r} must fit a structure for {n} vectors "
                f"of dim {dim}: full vectors need about {flat:.1f} MiB; one-byte PQ codes "
                f"(from {PQ_TRAIN_MIN} vectors up) about {codes:.1f} MiB plus centroids")
    else:
        structures = [structure]
    q = perturbed_sample(x, SAMPLE, NOISE, seed)
    # Exact top-k straight from the array: no second copy of the collection in an index.
    _, truth = faiss.knn(q, x, k_eval, metric=faiss.METRIC_INNER_PRODUCT)
    # Every candidate's measured point is kept for the record; only contenders keep an index
    # (each holds a copy of the collection).
    candidates: list[tuple[dict[str, Any], VectorIndex | None]] = []

    def measured(s: str) -> tuple[dict[str, Any], VectorIndex]:
        vi = VectorIndex(dim, model=model, structure=s, device="cpu")
        started = time.perf_counter()
        fill_index(vi.index, x, seed)
        filled_s = time.perf_counter() - started
        point = _tune(vi.index, s, q, truth, k_eval, recall_target, search_param)
        point["memory_mb"] = _memory_mb(vi.index, s, n, dim)
        point["build_s"] = round(filled_s, 3)  # train + add, without the tuning searches
        return point, vi

    for s in structures:
        point, vi = measured(s)
        candidates.append((point, vi))
        if structure is None and re.fullmatch(r"IVF\d+,Flat", s):
            candidates[-1:] = _climb_lists(candidates[-1], measured, n, dim, recall_target,
                                           budget)
    contenders = [c for c in candidates if c[1] is not None]
    meeting = [c for c in contenders if c[0]["recall"] >= recall_target]
    note = None
    chosen: VectorIndex | None
    if meeting:
        point, chosen = max(meeting, key=lambda c: c[0]["qps"])
    elif structure is not None:
        point, chosen = candidates[0]
    elif budget is None or estimate_memory_bytes("Flat", n, dim) <= budget:
        chosen = VectorIndex(dim, model=model, structure="Flat", device="cpu")
        fill_index(chosen.index, x, seed)
        point = _tune(chosen.index, "Flat", q, truth, k_eval, recall_target, None)
        point["memory_mb"] = _memory_mb(chosen.index, "Flat", n, dim)
    else:
        point, chosen = max(contenders, key=lambda c: (c[0]["recall"], c[0]["qps"]))
        note = (f"no structure within memory_budget_mb={memory_budget_mb} meets "
                f"recall@{k_eval} >= {recall_target}; best within the budget: "
                f"{point['choice']} at recall {point['recall']:.3f}")
        log.warning("index build: %s", note)
    op = dict(point, k=k_eval, recall_target=recall_target,
              target_met=bool(point["recall"] >= recall_target),
              memory_budget_mb=memory_budget_mb, sample=len(q), noise=NOISE, seed=seed, n=n,
              candidates=[c[0] for c in candidates])
    if note is not None:
        op["note"] = note
    elif not op["target_met"]:
        op["note"] = (f"{point['choice']} (as asked) measured recall@{k_eval} "
                      f"{point['recall']:.3f} < {recall_target}")
    assert chosen is not None  # only contenders keep their index
    result = VectorIndex(dim, model=model, structure=point["structure"],
                         search_param=point["search_param"], device=device,
                         faiss_index=chosen.index, operating_point=op)
    result.restore_ids({"ids": names, "int_ids": list(range(n)), "next_id": n})
    return result


def _climb_lists(first: tuple[dict[str, Any], VectorIndex | None], measured: Any, n: int,
                 dim: int, target: float, budget: float | None
                 ) -> list[tuple[dict[str, Any], VectorIndex | None]]:
    """IVF list counts from sqrt(n) upwards (``IVF_FACTORS``), doubling while the measured
    queries/s at the target improves; returns every rung measured, only the best with its
    index."""
    rungs = [first]
    best = first
    for factor in IVF_FACTORS[1:]:
        nxt = f"IVF{ivf_nlist(n, factor)},Flat"
        if best[0]["recall"] < target or nxt == best[0]["structure"]:
            break
        if budget is not None and estimate_memory_bytes(nxt, n, dim) > budget:
            break
        point, vi = measured(nxt)
        if point["recall"] >= target and point["qps"] > best[0]["qps"]:
            rungs = [(p, None) for p, _ in rungs] + [(point, vi)]
            best = rungs[-1]
        else:
            rungs.append((point, None))
            break
    return rungs


def _memory_mb(index: faiss.Index, structure: str, n: int, dim: int) -> float:
    """The estimate where the structure is modelled, else the serialized size (MiB)."""
    estimate = estimate_memory_bytes(structure, n, dim)
    if estimate is None:
        estimate = int(faiss.serialize_index(index).size)
    return round(estimate / MIB, 3)

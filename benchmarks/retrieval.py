"""Retrieval: the self-tuning FAISS index against exact search and a sweep of IVF and HNSW
parameters, on clustered synthetic vectors.

Data: a mixture of gaussians on the unit sphere, seeded: :data:`CLUSTERS` centres, each drawn
around one of :data:`TOPICS` topic directions (uniform on the sphere) with gaussian noise of
norm about :data:`TOPIC_SPREAD`, so that clusters have near neighbours as topics in real
embeddings do (with centres independent and uniform, an IVF whose list count matched the
cluster count would recover the clusters exactly and flatter it); each vector is a centre
plus isotropic gaussian noise of norm about :data:`SPREAD`, normalized. Queries are fresh
draws from the same mixture (another seed), not vectors of the collection: the index is tuned
on perturbed copies of its own vectors (:func:`ranking.index.tuning.perturbed_sample`) and
judged here on queries it has never seen.

For each size (n x dim; ``--quick``: 100k and 1M at 64; the full run adds 384):

- **exact**: FAISS ``IndexFlatIP`` over the same vectors, searched in batches of 256. Its
  top-100 is the truth every recall@100 is measured against, and its queries/s at batch 256,
  measured in the same run, is the reference every speed-up is a ratio to.
- **tuned**: :func:`ranking.index.build` with its defaults (recall@100 >= 0.95): its choice,
  build time (wall clock of the whole call: training, adding, tuning), memory, recall@100 on
  the fresh queries and queries/s at batch 1 (single queries, one call each) and at batch 256
  (a few batches, the best of five passes). Queries/s is the FAISS index's own search with
  the chosen parameter, as exact search is measured; ``wrapper_qps_batch256`` is the same
  batches through :meth:`ranking.index.VectorIndex.search` (string ids, filters), for what a
  caller sees.
- **sweep**: IVF (several list counts, each trained as the tuner trains, times a ``nprobe``
  ladder) and HNSW (``M`` times an ``efSearch`` ladder; only at sizes where the graph build
  is affordable, as in the tuner), each row measured like the tuned one. A structure the
  tuner built is not rebuilt: the sweep searches the tuned index, whose ``build_s`` is then
  the tuner's train + add time for it.

Memory is what ``faiss.serialize_index`` writes (MiB, 2**20 bytes). All indices, exact
included, search batches with the same number of threads (``--threads``, set for FAISS's
OpenMP and for the BLAS libraries through threadpoolctl) and single queries with one thread
(:data:`BATCH1_THREADS`), stated in the output.

Targets (:data:`TARGETS`): at 1M x 64, recall@100 >= 0.95 on fresh queries with at least 50x
exact search's queries/s at batch 256; at every size, the tuned choice's queries/s at batch
256 within 25% of the best sweep row meeting the same recall (the ratio is reported).

GPU: with ``faiss-gpu`` and a device, the tuned and exact indices are copied to the GPU and
measured the same way; with torch and CUDA but no ``faiss-gpu``, an exact torch top-k on the
GPU is measured as the reference; otherwise the section says it was skipped.

Results go to ``--out`` (JSON) and a plot next to it (PNG).

Usage: python benchmarks/retrieval.py [--quick] [--out PATH] [--threads N] [--queries N]
       [--sizes NxD ...] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path: take it out, and put the
# repository root in, so that the project's packages import as they do everywhere else.
_HERE = Path(__file__).resolve().parent
REPO = _HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from ranking.index import build  # noqa: E402
from ranking.index.tuning import HNSW_MAX, fill_index, ivf_nlist, recall_at_k  # noqa: E402
from ranking.index.vector_index import make_faiss_index  # noqa: E402

console = Console(width=shutil.get_terminal_size((140, 40)).columns)

TOPICS = 100
TOPIC_SPREAD = 0.8
CLUSTERS = 3000
SPREAD = 0.6
K = 100
BATCH = 256
BATCH1_QUERIES = 200
TARGETS = {"recall@100": 0.95, "speedup_vs_exact": 50.0, "at": {"n": 1_000_000, "dim": 64},
           "vs_sweep_best": 0.75}
MIB = 2**20
RESULTS = REPO / "benchmarks" / "results"


@dataclass(frozen=True)
class Plan:
    """What one run measures; ``--quick`` and the full run differ only here."""

    sizes: tuple[tuple[int, int], ...]
    queries: int
    # IVF list counts of the sweep, as multiples of sqrt(n) (the tuner uses 4 sqrt(n)).
    ivf_factors: tuple[float, ...]
    ivf_factors_1m: tuple[float, ...]
    nprobes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    hnsw_m: tuple[int, ...] = (16, 32)
    efs: tuple[int, ...] = (16, 32, 64, 128, 256)
    extra: dict[str, Any] = field(default_factory=dict)


QUICK = Plan(sizes=((100_000, 64), (1_000_000, 64)), queries=1024,
             ivf_factors=(1.0, 4.0), ivf_factors_1m=(1.0, 4.0), hnsw_m=(32,))
FULL = Plan(sizes=((100_000, 64), (1_000_000, 64), (100_000, 384), (1_000_000, 384)),
            queries=1024, ivf_factors=(1.0, 2.0, 4.0, 8.0), ivf_factors_1m=(1.0, 2.0, 4.0))


# -- data -------------------------------------------------------------------------------------
def mixture(n: int, dim: int, seed: int, centres: np.ndarray) -> np.ndarray:
    """``n`` draws from the mixture: a uniformly chosen centre plus gaussian noise, normalized.
    Generated in chunks so that 1M x 384 never holds a float64 copy."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    sigma = SPREAD / math.sqrt(dim)
    for lo in range(0, n, 100_000):
        hi = min(n, lo + 100_000)
        chunk = centres[rng.integers(0, len(centres), hi - lo)]
        chunk = chunk + sigma * rng.standard_normal((hi - lo, dim), dtype=np.float32)
        out[lo:hi] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def centres_on_sphere(dim: int, seed: int) -> np.ndarray:
    """:data:`CLUSTERS` unit centres, grouped around :data:`TOPICS` topic directions."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((TOPICS, dim)).astype(np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    c = topics[rng.integers(0, TOPICS, CLUSTERS)]
    c = c + (TOPIC_SPREAD / math.sqrt(dim)) * rng.standard_normal((CLUSTERS, dim),
                                                                  dtype=np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


# -- measuring --------------------------------------------------------------------------------
def batches(q: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for lo in range(0, len(q), size):
        yield q[lo:lo + size]


def timed_batches(index: faiss.Index, q: np.ndarray, params: Any, passes: int = 5
                  ) -> tuple[np.ndarray, float]:
    """Labels of ``q`` (batches of 256) and the best pass's queries/s."""
    best, labels = math.inf, np.empty((0, K), dtype=np.int64)
    for _ in range(passes):
        parts = []
        started = time.perf_counter()
        for chunk in batches(q, BATCH):
            parts.append(index.search(chunk, K, params=params)[1])
        best = min(best, time.perf_counter() - started)
        labels = np.concatenate(parts)
    return labels, len(q) / best


BATCH1_THREADS = 1


def timed_single(index: faiss.Index, q: np.ndarray, params: Any, passes: int = 2) -> float:
    """Queries/s of ``q`` searched one query per call (the better of ``passes``), on
    :data:`BATCH1_THREADS` threads: FAISS's CPU indices give a single query to one thread
    anyway, and the OpenMP wake-ups of idle ones, on a shared machine, swamped the figure."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(BATCH1_THREADS)
    try:
        best = math.inf
        for _ in range(passes):
            started = time.perf_counter()
            for i in range(len(q)):
                index.search(q[i:i + 1], K, params=params)
            best = min(best, time.perf_counter() - started)
    finally:
        faiss.omp_set_num_threads(threads)
    return len(q) / best


def params_for(param: str | None, value: int | None) -> Any:
    if param == "nprobe":
        return faiss.SearchParametersIVF(nprobe=value)
    if param == "efSearch":
        return faiss.SearchParametersHNSW(efSearch=value)
    return None


def stored_mib(index: faiss.Index) -> float:
    return round(faiss.serialize_index(index).size / MIB, 2)


def measure(index: faiss.Index, param: str | None, value: int | None, q: np.ndarray,
            truth: np.ndarray, exact_qps: float) -> dict[str, Any]:
    params = params_for(param, value)
    labels, qps256 = timed_batches(index, q, params)
    qps1 = timed_single(index, q[:BATCH1_QUERIES], params)
    return {"recall@100": round(recall_at_k(labels, truth), 4), "qps_batch1": round(qps1, 1),
            "qps_batch256": round(qps256, 1), "exact_qps_batch256": round(exact_qps, 1),
            "speedup_vs_exact": round(qps256 / exact_qps, 2)}


# -- one size ---------------------------------------------------------------------------------
def run_size(n: int, dim: int, plan: Plan, seed: int, keep_inputs: bool = False
             ) -> dict[str, Any]:
    step(f"{n:,} x {dim}: data")
    centres = centres_on_sphere(dim, seed + 1000 + dim)
    x = mixture(n, dim, seed, centres)
    q = mixture(plan.queries, dim, seed + 1, centres)
    step(f"{n:,} x {dim}: exact search (truth and reference)")
    exact = faiss.IndexFlatIP(dim)
    exact.add(x)
    truth, exact_qps = timed_batches(exact, q, None, passes=1)
    exact_qps1 = timed_single(exact, q[:20], None, passes=1)
    exact_row = {"n": n, "dim": dim, "choice": "Flat (exact)", "recall@100": 1.0,
                 "qps_batch1": round(exact_qps1, 1), "qps_batch256": round(exact_qps, 1),
                 "exact_qps_batch256": round(exact_qps, 1), "speedup_vs_exact": 1.0,
                 "build_s": None, "memory_mb": round((4 * dim * n) / MIB, 2)}
    del exact

    step(f"{n:,} x {dim}: tuned build")
    ids = [f"i{i}" for i in range(n)]
    started = time.perf_counter()
    tuned = build(ids, x, model="benchmark", recall_target=TARGETS["recall@100"], k=K, seed=seed)
    build_s = time.perf_counter() - started
    op = tuned.operating_point
    row = {"n": n, "dim": dim, "choice": op["choice"],
           **measure(tuned.index, op["param"], op["search_param"], q, truth, exact_qps),
           "build_s": round(build_s, 2), "memory_mb": stored_mib(tuned.index),
           "tuning_recall": round(op["recall"], 4),
           "candidates": [c["choice"] for c in op["candidates"]]}
    started = time.perf_counter()
    for chunk in batches(q, BATCH):
        tuned.search(chunk, K)
    row["wrapper_qps_batch256"] = round(len(q) / (time.perf_counter() - started), 1)
    # The sweep reuses the tuned index; its build_s there is the train + add of that structure.
    reuse = {op["structure"]: (tuned.index, next(c["build_s"] for c in op["candidates"]
                                                 if c["structure"] == op["structure"]))}
    del tuned, ids

    sweep = sweep_size(x, q, truth, exact_qps, plan, seed, reuse)
    # The vectors are kept for the GPU section only where there is one (1M x 384 is 1.5 GB).
    return {"exact": exact_row, "index": row, "sweep": sweep,
            "gpu_inputs": (x, q, truth) if keep_inputs else None}


def sweep_structures(n: int, dim: int, plan: Plan, tuned: str) -> list[str]:
    """IVF at the plan's list counts (in units of sqrt(n), as the tuner counts them) and the
    tuned structure if it is an IVF; HNSW where the tuner would try it."""
    factors = plan.ivf_factors_1m if n >= 1_000_000 else plan.ivf_factors
    lists = {ivf_nlist(n, f) for f in factors}
    if m := re.fullmatch(r"IVF(\d+),Flat", tuned):
        lists.add(int(m.group(1)))
    out = [f"IVF{nlist},Flat" for nlist in sorted(lists)]
    if n <= HNSW_MAX:
        out += [f"HNSW{m}" for m in plan.hnsw_m]
    return out


def sweep_size(x: np.ndarray, q: np.ndarray, truth: np.ndarray, exact_qps: float, plan: Plan,
               seed: int, reuse: dict[str, tuple[faiss.Index, float]]) -> list[dict[str, Any]]:
    n, dim = x.shape
    rows = []
    for structure in sweep_structures(n, dim, plan, next(iter(reuse), "")):
        if structure in reuse:
            index, build_s = reuse.pop(structure)
        else:
            step(f"{n:,} x {dim}: sweep build {structure}")
            index = make_faiss_index(dim, structure)
            started = time.perf_counter()
            fill_index(index, x, seed)
            build_s = time.perf_counter() - started
        memory = stored_mib(index)
        if structure.startswith("IVF"):
            nlist = int(faiss.extract_index_ivf(index).nlist)
            param, ladder = "nprobe", [p for p in plan.nprobes if p <= nlist]
        else:
            param, ladder = "efSearch", list(plan.efs)
        step(f"{n:,} x {dim}: sweep {structure} {param} {ladder}")
        for value in ladder:
            rows.append({"n": n, "dim": dim, "choice": f"{structure} {param}={value}",
                         **measure(index, param, value, q, truth, exact_qps),
                         "build_s": round(build_s, 2), "memory_mb": memory})
            if rows[-1]["recall@100"] >= 0.999:
                break  # wider searches only cost time from here
        del index
    return rows


# -- GPU ----------------------------------------------------------------------------------------
def gpu_present() -> bool:
    if (faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0) > 0:
        return True
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def gpu_section(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if n_gpus > 0:
        return {"mode": "faiss-gpu", "rows": [gpu_faiss_rows(s) for s in sizes]}
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        return {"mode": "torch exact top-k", "device": torch.cuda.get_device_name(0),
                "rows": [torch_topk_row(s, torch) for s in sizes]}
    return {"mode": "skipped", "reason": "no GPU here (faiss.get_num_gpus() == 0 and "
            "torch.cuda.is_available() is false)"}


def gpu_faiss_rows(size: dict[str, Any]) -> list[dict[str, Any]]:
    x, q, truth = size["gpu_inputs"]
    n, dim = x.shape
    res = faiss.StandardGpuResources()
    exact = faiss.index_cpu_to_gpu(res, 0, faiss.IndexFlatIP(dim))
    exact.add(x)
    _, exact_qps = timed_batches(exact, q, None)
    rows = [{"n": n, "dim": dim, "choice": "Flat (exact)", "qps_batch256": round(exact_qps, 1)}]
    choice = size["index"]["choice"]
    structure, _, setting = choice.partition(" ")
    if structure.startswith("IVF"):
        cpu = make_faiss_index(dim, structure)
        fill_index(cpu, x, 0)
        gpu = faiss.index_cpu_to_gpu(res, 0, cpu)
        nprobe = int(setting.split("=")[1])
        faiss.GpuParameterSpace().set_index_parameter(gpu, "nprobe", nprobe)
        labels, qps = timed_batches(gpu, q, None)
        rows.append({"n": n, "dim": dim, "choice": choice,
                     "recall@100": round(recall_at_k(labels, truth), 4),
                     "qps_batch256": round(qps, 1), "exact_qps_batch256": round(exact_qps, 1),
                     "speedup_vs_exact": round(qps / exact_qps, 2)})
    else:
        rows.append({"n": n, "dim": dim, "choice": choice, "skipped": "no GPU HNSW in FAISS"})
    return rows


def torch_topk_row(size: dict[str, Any], torch: Any) -> dict[str, Any]:
    x, q, truth = size["gpu_inputs"]
    xs = torch.from_numpy(x).cuda()
    labels, best = [], math.inf
    for _ in range(2):
        torch.cuda.synchronize()
        started = time.perf_counter()
        labels = [torch.topk(torch.from_numpy(c).cuda() @ xs.T, K, dim=1).indices.cpu()
                  for c in batches(q, BATCH)]
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    found = torch.cat(labels).numpy()
    return {"n": len(x), "dim": x.shape[1], "choice": "torch exact top-k (GPU)",
            "recall@100": round(recall_at_k(found, truth), 4),
            "qps_batch256": round(len(q) / best, 1),
            "cpu_tuned_qps_batch256": size["index"]["qps_batch256"]}


# -- targets, report, plot --------------------------------------------------------------------
def targets(index_rows: list[dict[str, Any]], sweep: list[dict[str, Any]]) -> dict[str, Any]:
    """Per size: the best sweep row at the recall target and the tuned row's ratio to it."""
    out: list[dict[str, Any]] = []
    for row in index_rows:
        same = [s for s in sweep if s["n"] == row["n"] and s["dim"] == row["dim"]
                and s["recall@100"] >= TARGETS["recall@100"]]
        best = max(same, key=lambda s: s["qps_batch256"], default=None)
        ratio = row["qps_batch256"] / best["qps_batch256"] if best else None
        # Stricter: only rows at least as accurate as the tuned choice measured here.
        as_good = [s for s in same if s["recall@100"] >= row["recall@100"]]
        best_as_good = max(as_good, key=lambda s: s["qps_batch256"], default=None)
        # The same configuration's own sweep row: the two measurements show the noise.
        own = next((s for s in same if s["choice"] == row["choice"]), None)
        out.append({"n": row["n"], "dim": row["dim"], "choice": row["choice"],
                    "recall@100": row["recall@100"], "speedup_vs_exact": row["speedup_vs_exact"],
                    "sweep_best": best["choice"] if best else None,
                    "sweep_best_qps_batch256": best["qps_batch256"] if best else None,
                    "vs_sweep_best": round(ratio, 3) if ratio is not None else None,
                    "sweep_best_at_tuned_recall": best_as_good["choice"] if best_as_good
                    else None,
                    "vs_sweep_best_at_tuned_recall": round(
                        row["qps_batch256"] / best_as_good["qps_batch256"], 3)
                    if best_as_good else None,
                    "sweep_row_of_choice_qps_batch256": own["qps_batch256"] if own else None,
                    "recall_met": row["recall@100"] >= TARGETS["recall@100"],
                    "vs_sweep_best_met": ratio is not None and ratio >= TARGETS["vs_sweep_best"]})
    at = TARGETS["at"]
    head = next((t for t in out if t["n"] == at["n"] and t["dim"] == at["dim"]), None)
    summary: dict[str, Any] = {"targets": TARGETS, "rows": out}
    if head is not None:
        summary["headline"] = dict(
            head, speedup_met=head["speedup_vs_exact"] >= TARGETS["speedup_vs_exact"],
            all_met=bool(head["recall_met"] and head["vs_sweep_best_met"]
                         and head["speedup_vs_exact"] >= TARGETS["speedup_vs_exact"]))
    return summary


def step(what: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {what}")


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def report(results: dict[str, Any]) -> None:
    table = Table(title=f"tuned index vs exact search ({results['threads']} threads, recall@100 "
                  f"on {results['plan']['queries']} fresh queries)")
    for col in ("n x dim", "choice", "recall@100", "qps b1", "qps b256", "exact qps b256",
                "speed-up", "build s", "MiB", "vs sweep best"):
        table.add_column(col, justify="left" if col == "choice" else "right")
    for row, t in zip(results["index"], results["summary"]["rows"], strict=True):
        table.add_row(f"{row['n']:,} x {row['dim']}", row["choice"], f"{row['recall@100']:.3f}",
                      _fmt(row["qps_batch1"]), _fmt(row["qps_batch256"]),
                      _fmt(row["exact_qps_batch256"]), f"{row['speedup_vs_exact']:.1f}x",
                      _fmt(row["build_s"], 1), _fmt(row["memory_mb"], 1),
                      f"{t['vs_sweep_best']:.2f} of {t['sweep_best']}"
                      if t["vs_sweep_best"] is not None else "no sweep row at target")
    console.print(table)
    sweep = Table(title="sweep (rows at recall@100 >= 0.9)")
    for col in ("n x dim", "choice", "recall@100", "qps b1", "qps b256", "speed-up", "build s",
                "MiB"):
        sweep.add_column(col, justify="left" if col == "choice" else "right")
    for row in results["sweep"]:
        if row["recall@100"] >= 0.9:
            sweep.add_row(f"{row['n']:,} x {row['dim']}", row["choice"],
                          f"{row['recall@100']:.3f}", _fmt(row["qps_batch1"]),
                          _fmt(row["qps_batch256"]), f"{row['speedup_vs_exact']:.1f}x",
                          _fmt(row["build_s"], 1), _fmt(row["memory_mb"], 1))
    console.print(sweep)
    head = results["summary"].get("headline")
    if head:
        console.print(
            f"target at 1M x 64: recall@100 {head['recall@100']:.3f} (>= 0.95: "
            f"{'met' if head['recall_met'] else 'NOT met'}), {head['speedup_vs_exact']:.1f}x "
            f"exact at batch 256 (>= 50x: {'met' if head['speedup_met'] else 'NOT met'}), "
            f"{_fmt(head['vs_sweep_best'], 2)} of the sweep's best at that recall (>= 0.75: "
            f"{'met' if head['vs_sweep_best_met'] else 'NOT met'})")
    gpu = results["gpu"]
    if gpu["mode"] == "skipped":
        console.print(f"GPU: skipped, {gpu['reason']}")
    else:
        console.print(f"GPU ({gpu['mode']}): {json.dumps(gpu['rows'])}")
    console.print(f"threads: {results['threads']} at batch 256 (faiss.omp_set_num_threads and "
                  f"BLAS via threadpoolctl), {BATCH1_THREADS} at batch 1, the same for every "
                  f"index, exact included; {results['cores']} cores")


def figure(results: dict[str, Any], path: Path) -> bool:
    """Queries/s at batch 256 against recall@100 per size: sweep curves, the tuned choice,
    exact search and the 50x line."""
    sizes = [(r["n"], r["dim"]) for r in results["index"]]
    if not sizes:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(2, len(sizes))
    rows_ = math.ceil(len(sizes) / cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(6 * cols, 4.5 * rows_), squeeze=False)
    for ax, (n, dim) in zip(axes.flat, sizes):
        rows = [r for r in results["sweep"] if r["n"] == n and r["dim"] == dim]
        for structure in dict.fromkeys(r["choice"].split(" ")[0] for r in rows):
            line = [r for r in rows if r["choice"].split(" ")[0] == structure]
            ax.plot([r["recall@100"] for r in line], [r["qps_batch256"] for r in line],
                    marker="o", ms=3, label=structure)
        tuned = next(r for r in results["index"] if r["n"] == n and r["dim"] == dim)
        ax.plot([tuned["recall@100"]], [tuned["qps_batch256"]], marker="*", ms=14, color="k",
                linestyle="none", label=f"tuned: {tuned['choice']}")
        exact = tuned["exact_qps_batch256"]
        ax.axhline(exact, color="grey", linestyle="--", label="exact (Flat)")
        ax.axhline(exact * TARGETS["speedup_vs_exact"], color="red", linestyle=":",
                   label="50x exact")
        ax.axvline(TARGETS["recall@100"], color="red", linestyle=":")
        ax.set_yscale("log")
        ax.set_xlim(left=max(0.5, min([r["recall@100"] for r in rows] + [0.9]) - 0.02))
        ax.set_title(f"{n:,} x {dim}")
        ax.set_xlabel("recall@100 (fresh queries)")
        ax.set_ylabel("queries/s, batch 256")
        ax.legend(fontsize=6)
    fig.suptitle(f"FAISS on {results['threads']} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# -- command line -----------------------------------------------------------------------------
def parse_size(text: str) -> tuple[int, int]:
    try:
        n, dim = text.lower().split("x")
        return int(float(n)), int(dim)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} must read NxDIM, e.g. 100000x64")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="100k and 1M vectors at dim 64 and a smaller sweep (minutes)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the JSON results go (default: benchmarks/results/"
                        "retrieval-quick.json with --quick, else benchmarks/results/"
                        "retrieval.json); the plot goes next to it as .png")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="threads for every index searched, exact included "
                        "(default: the cores this process may use, %(default)s)")
    parser.add_argument("--queries", type=int, default=None,
                        help="fresh queries per size for recall and batch-256 queries/s "
                        "(default: the plan's)")
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=None, metavar="NxDIM",
                        help="sizes to run instead of the plan's, e.g. 20000x64 (a smoke test)")
    parser.add_argument("--seed", type=int, default=0, help="data and build seed")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = RESULTS / ("retrieval-quick.json" if args.quick else "retrieval.json")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.queries is not None:
        plan = replace(plan, queries=args.queries)
    if args.sizes is not None:
        plan = replace(plan, sizes=tuple(args.sizes))
    keep = gpu_present()
    faiss.omp_set_num_threads(args.threads)
    started = time.perf_counter()
    sizes = []
    with threadpool_limits(limits=args.threads):
        for n, dim in plan.sizes:
            sizes.append(run_size(n, dim, plan, args.seed, keep_inputs=keep))
        step("GPU section")
        gpu = gpu_section(sizes)
    index_rows = [s["index"] for s in sizes]
    sweep = [r for s in sizes for r in s["sweep"]]
    results: dict[str, Any] = {
        "quick": args.quick, "threads": args.threads, "batch1_threads": BATCH1_THREADS,
        "cores": len(os.sched_getaffinity(0)),
        "faiss": faiss.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "memory_unit": "MiB (2**20 bytes)",
        "data": {"topics": TOPICS, "topic_spread": TOPIC_SPREAD, "clusters": CLUSTERS,
                 "spread": SPREAD, "queries": "fresh mixture draws",
                 "seed": args.seed},
        "plan": {k: v for k, v in plan.__dict__.items() if k != "extra"},
        "index": index_rows, "exact": [s["exact"] for s in sizes], "sweep": sweep,
        "summary": targets(index_rows, sweep), "gpu": gpu}
    results["seconds"] = round(time.perf_counter() - started, 1)
    report(results)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    console.print(f"wrote {out} ({results['seconds']:.0f} s)")
    png = out.with_suffix(".png")
    if figure(results, png):
        console.print(f"wrote {png}")
    return results


if __name__ == "__main__":
    main()

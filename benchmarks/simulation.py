"""Simulated impressions per second (10 slots), vectorized against a plain per-impression loop.

For catalogs of 10k and 1M items: :func:`simulation.simulator.simulate` (popularity-driven
candidates, a uniform-random policy over 10 of them, true grades, position-based clicks,
dwell and reactions) on one thread and on one thread per core (median of three runs each),
then the same work written as a Python loop over impressions (the reference, timed on fewer
impressions, in the same process), and the rate of turning a simulated log into event
frames. Also search sessions per second (noisy queries, exact-match retrieval over the
catalog, reformulations). Target: >= 1M impressions/s.

Usage: python benchmarks/simulation.py [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from simulation.clicks import PositionBasedModel, attractiveness, examination  # noqa: E402
from simulation.policies import RetrievalOrderPolicy, UniformRandomPolicy  # noqa: E402
from simulation.search import simulate_search  # noqa: E402
from simulation.simulator import simulate  # noqa: E402
from simulation.world import World  # noqa: E402

K = 10


def vectorized_rate(world: World, n: int, workers: int, repeats: int = 3) -> float:
    model, policy = PositionBasedModel(examination(K)), UniformRandomPolicy()
    simulate(world, policy, model, n=1000, k=K, candidates=K)  # warm caches
    rates = []
    for repeat in range(repeats):
        started = time.perf_counter()
        simulate(world, policy, model, n=n, k=K, candidates=K, seed=repeat, workers=workers)
        rates.append(n / (time.perf_counter() - started))
    return float(np.median(rates))


def search_rate(world: World, sessions: int) -> dict[str, float]:
    started = time.perf_counter()
    search = simulate_search(world, RetrievalOrderPolicy(), PositionBasedModel(examination(K)),
                             sessions, k=K, seed=4)
    seconds = time.perf_counter() - started
    return {"sessions_per_s": sessions / seconds, "queries_per_s": search.steps.height / seconds}


def loop_rate(world: World, n: int) -> float:
    """The same model, one impression at a time (what River-style code would do)."""
    rng = np.random.default_rng(2)
    theta = examination(K)
    sampler = world.popularity_sampler()
    attract = attractiveness(np.arange(5), 0.1)
    started = time.perf_counter()
    for _ in range(n):
        user = int(rng.integers(world.n_users))
        candidates = list(dict.fromkeys(sampler(rng, (2 * K,)).tolist()))[:K]
        rng.shuffle(candidates)
        grades = world.relevance(np.full(len(candidates), user), np.array(candidates))
        clicks = rng.random(len(candidates)) < theta[: len(candidates)] * attract[grades]
        for position in np.flatnonzero(clicks):
            rng.lognormal(np.log(5 + 10 * grades[position]), 0.5)
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller runs, under a minute")
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir())
                                             / "clickloop-bench-simulation.json"),
                        help="where the JSON goes (default: the temp folder; the current "
                        "figures live in benchmarks/results/simulation.json)")
    args = parser.parse_args()
    n = 500_000 if args.quick else 5_000_000
    n_loop = 2_000 if args.quick else 20_000
    console = Console()
    cores = os.cpu_count() or 1
    results: dict = {"slots": K, "impressions": n, "cores": cores, "catalogs": {}}
    for n_items in (10_000, 1_000_000):
        with console.status(f"{n_items:,} items"):
            world = World(n_items=n_items, seed=0)
            one = vectorized_rate(world, n, workers=1)
            fast = vectorized_rate(world, n, workers=cores)
            slow = loop_rate(world, n_loop)
            log = simulate(world, UniformRandomPolicy(), PositionBasedModel(examination(K)),
                           n=min(n, 200_000), k=K, candidates=K, seed=3)
            started = time.perf_counter()
            frames = log.frames()
            events = sum(f.height for f in frames.values())
            frame_rate = log.n / (time.perf_counter() - started)
        results["catalogs"][str(n_items)] = {
            "impressions_per_s": fast, "one_thread_impressions_per_s": one,
            "plain_loop_impressions_per_s": slow,
            "speedup": fast / slow, "to_event_frames_impressions_per_s": frame_rate,
            "events_per_impression": events / log.n}
    with console.status("search sessions"):
        results["search_10k_items"] = search_rate(World(n_items=10_000, seed=0),
                                                  2_000 if args.quick else 20_000)
    table = Table(title=f"simulated impressions per second ({K} slots)")
    for name in ("items", f"{cores} threads", "1 thread", "plain loop", "speedup",
                 "→ event frames", "target"):
        table.add_column(name, justify="right")
    for n_items, r in results["catalogs"].items():
        table.add_row(f"{int(n_items):,}", f"{r['impressions_per_s']:,.0f}",
                      f"{r['one_thread_impressions_per_s']:,.0f}",
                      f"{r['plain_loop_impressions_per_s']:,.0f}", f"{r['speedup']:,.0f}x",
                      f"{r['to_event_frames_impressions_per_s']:,.0f}", "≥ 1M")
    console.print(table)
    search = results["search_10k_items"]
    console.print(f"search sessions, 10k items: {search['sessions_per_s']:,.0f} sessions/s, "
                  f"{search['queries_per_s']:,.0f} queries/s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()

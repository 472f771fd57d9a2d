"""Bandits: our batched policies against Vowpal Wabbit on one synthetic contextual stream, and
off-policy evaluation on the Open Bandit Dataset against Open Bandit Pipeline's figures.

1. **Stream.** :data:`USER_DIM` user and :data:`ITEM_DIM` item features, all standard
   gaussian: a pool of :data:`N_USERS` users and a catalog of :data:`N_ITEMS` items, seeded.
   Each round draws a user and N candidates (10, then 100) at random from the catalog; the
   shown item is clicked with probability ``sigmoid(u^T W v / SCALE + BIAS)``, ``W`` a fixed
   gaussian matrix: a Bernoulli draw around a known bilinear function. Every learner sees
   the same rounds and the same uniform draws (a click is ``uniform < p``), so their
   rewards differ only by what they choose. Reported beside them: the oracle's mean reward
   (the best candidate's probability, each round) and the uniform random policy's.

   - **Vowpal Wabbit** (``vowpalwabbit``, one ``Workspace`` per learner), in its ADF text
     format: a ``shared |U ...`` line of the user's features and one ``|A ...`` line per
     candidate, ``-q UA`` for the user x item crossing. Options ``--cb_explore_adf`` with
     ``--epsilon 0.1``, ``--squarecb`` and ``--regcbopt``. Per round: ``predict`` (the
     exploration distribution), an action drawn from it, the reward, and ``learn`` with the
     label ``0:cost:probability`` on the chosen line, cost ``1 - reward`` (VW's default cost
     range, [0, 1]). VW learns after every example; the
     feature lines are formatted once per user and per item before the clock starts, so its
     time is VW's parsing, prediction and learning, plus the loop around them.
   - **Ours** (:mod:`bandits.policies`): features by :class:`bandits.policies.CrossFeatures`
     (``[u, 1] (x) [v, 1]``, 289 columns, in which the bilinear form is linear); the stream
     in batches of ``--batch`` rounds: one ``select`` over B x N candidates, the rewards, one
     ``partial_fit`` of the B shown rows. So this is batched learning (the model is
     updated every B rounds) against VW's per-example learning. LinUCB (one shared model),
     Diag-LinUCB, epsilon-greedy, softmax and linear Thompson sampling (with
     ``propensity_samples=0``: its slot propensities are estimated by extra posterior draws,
     which the stream does not use).

   Rounds/s: the whole loop over the stream, wall clock, on the threads torch uses here
   (VW is single threaded); for ours the fastest of ``--passes`` passes, each from a fresh
   policy (they choose alike), for VW its one pass (long enough to average out). Average
   reward: the mean click over the stream, learning included. Where VW runs fewer rounds
   than ours (``--quick``), every row also reports its average reward over the first rounds
   that all learners ran, and the reward target is judged on those. Target, at each
   candidate count: one of our learners at least 10x VW's best rounds/s with an average
   reward at least VW's best.
2. **OPE** on the OBD men sample (``--data``; skipped with a message when absent): the value
   of the BTS policy (``bts/men/bts_action_dist.csv``) estimated from the random log, by the
   code of ``clickloop ope`` (:func:`bandits.ope.obd.read_obd_log`,
   :meth:`bandits.ope.obd.ObdLog.refit`, :func:`bandits.ope.evaluate`): every estimator,
   the reward model cross-fitted (3 folds) again on each of ``--ope-runs`` bootstrap
   resamples, relative error against the BTS log's click rate, beside Open Bandit
   Pipeline's figures (:data:`OBP`, from the data folder's README: the same protocol with
   its logistic regression). Beside each, the relative error of the estimate on the whole
   log, which no resampling moves. Reward models: ``logistic`` (OBP's, the default of
   ``clickloop ope``), ``crossed`` (user x item features, more regularized; the full run)
   and ``hgb`` (gradient-boosted trees on the plain features, through the same ``refit``
   hook; on request, being slow). Target: the best estimator at most 0.30 and each
   estimator at most OBP's same one, judged per reward model (choosing a model by its
   error against the truth would tune on the answer).
3. **GPU**: when ``torch.cuda.is_available()``, our policies' rounds/s on the GPU at batches
   of up to 64k requests (select and partial_fit, features built on the device); otherwise
   a line saying it was skipped.

Tables go to the terminal, every number to ``--out`` (JSON) and a plot next to it (PNG).

Usage: python benchmarks/bandits.py [--quick] [--out PATH] [--data DIR] [--rounds N]
       [--vw-rounds N] [--batch B] [--passes N] [--ope-runs N] [--ope-models NAME ...]
       [--learners NAME ...] [--skip SECTION ...] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path: take it out, and put the
# repository root in, so that the project's packages import as they do everywhere else.
_HERE = Path(__file__).resolve().parent
REPO = _HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bandits.ope import jsonable  # noqa: E402
from bandits.policies import (  # noqa: E402
    CrossFeatures,
    DiagLinUCB,
    EpsilonGreedy,
    LinearThompsonSampling,
    LinUCB,
    Softmax,
)

console = Console(width=max(shutil.get_terminal_size((140, 40)).columns, 140))

RESULTS = REPO / "benchmarks" / "results"
DEFAULT_DATA = "../shared/data/obd"
SECTIONS = ("stream", "ope", "gpu")
USER_DIM = 16
ITEM_DIM = 16
N_USERS = 10_000
N_ITEMS = 1_000
CANDIDATES = (10, 100)
# The bilinear form of standard gaussians has a standard deviation of sqrt(16 * 16) = 16:
# divided by 8 and shifted by -1, click rates spread from rare to likely.
SCALE = 8.0
BIAS = -1.0
VW_OPTIONS = {"vw-epsilon": "--cb_explore_adf --epsilon 0.1",
              "vw-squarecb": "--cb_explore_adf --squarecb",
              "vw-regcbopt": "--cb_explore_adf --regcbopt"}
#: Open Bandit Pipeline's relative errors on the men sample (the data folder's README).
OBP = {"dm": 0.376, "ipw": 0.343, "snipw": 0.335, "dr": 0.351, "sndr": 0.351,
       "switch-dr": 0.318, "dr-os": 0.347}
TARGETS = {"speedup_vs_vw_best": 10.0, "reward_vs_vw_best": 1.0, "ope_best": 0.30,
           "ope_each_vs_obp": 1.0}
GPU_BATCHES = (1024, 4096, 16_384, 65_536)


@dataclass(frozen=True)
class Plan:
    """What one run does; ``--quick`` and the full run differ only here."""

    rounds: dict[int, int]
    vw_rounds: dict[int, int]
    batch: int
    ope_runs: int
    ope_models: tuple[str, ...]
    passes: int = 2


QUICK = Plan(rounds={10: 100_000, 100: 20_000}, vw_rounds={10: 20_000, 100: 5_000}, batch=1024,
             ope_runs=5, ope_models=("logistic",))
FULL = Plan(rounds={10: 100_000, 100: 100_000}, vw_rounds={10: 100_000, 100: 100_000},
            batch=1024, ope_runs=30, ope_models=("logistic", "crossed"), passes=3)


# -- the stream -------------------------------------------------------------------------------
@dataclass(frozen=True)
class World:
    """Users, items, the bilinear weights, and a stream of rounds over them."""

    users: np.ndarray
    items: np.ndarray
    weights: np.ndarray

    @classmethod
    def make(cls, seed: int) -> World:
        rng = np.random.default_rng(seed)
        return cls(rng.standard_normal((N_USERS, USER_DIM)),
                   rng.standard_normal((N_ITEMS, ITEM_DIM)),
                   rng.standard_normal((USER_DIM, ITEM_DIM)))

    def click_probability(self, users: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """(R, N): the true click probability of each round's candidates."""
        left = self.users[users] @ self.weights  # (R, ITEM_DIM)
        logit = np.einsum("rd,rnd->rn", left, self.items[candidates]) / SCALE + BIAS
        return 1.0 / (1.0 + np.exp(-logit))


@dataclass(frozen=True)
class Stream:
    """``rounds`` rounds of N candidates: user, candidates, their click probabilities and the
    uniform draw that decides the click of whatever is shown."""

    user: np.ndarray
    candidates: np.ndarray
    probability: np.ndarray
    uniform: np.ndarray

    @classmethod
    def make(cls, world: World, rounds: int, n: int, seed: int) -> Stream:
        rng = np.random.default_rng([seed, n])
        user = rng.integers(0, N_USERS, rounds)
        # N distinct items per round: the first N of a random key order over the catalog,
        # drawn in chunks so that 100k x 1000 keys never sit in memory at once.
        candidates = np.empty((rounds, n), dtype=np.int64)
        for lo in range(0, rounds, 10_000):
            hi = min(rounds, lo + 10_000)
            candidates[lo:hi] = np.argpartition(rng.random((hi - lo, N_ITEMS)), n, 1)[:, :n]
        return cls(user, candidates, world.click_probability(user, candidates),
                   rng.random(rounds))

    @property
    def oracle(self) -> float:
        return float(self.probability.max(1).mean())

    @property
    def random(self) -> float:
        return float(self.probability.mean())


def _fmt_features(prefix: str, values: np.ndarray) -> list[str]:
    return [prefix + " ".join(f"{j}:{v:.5f}" for j, v in enumerate(row)) for row in values]


def vw_available() -> tuple[bool, str]:
    try:
        import vowpalwabbit
    except ImportError as exc:
        return False, f"vowpalwabbit is not importable ({exc}); pip install vowpalwabbit"
    return True, getattr(vowpalwabbit, "__version__", "unknown")


def run_vw(name: str, world: World, stream: Stream, rounds: int, seed: int,
           shared: list[str], actions: list[str]) -> dict[str, Any]:
    """One VW learner over the first ``rounds`` rounds, one example at a time."""
    import vowpalwabbit

    vw = vowpalwabbit.Workspace(f"{VW_OPTIONS[name]} -q UA --quiet --random_seed {seed}")
    rng = np.random.default_rng(seed)
    draws = rng.random(rounds)
    reward = np.empty(rounds)
    started = time.perf_counter()
    for t in range(rounds):
        cands = stream.candidates[t]
        lines = [shared[stream.user[t]]] + [actions[c] for c in cands]
        pmf = np.asarray(vw.predict(lines), dtype=np.float64)
        a = min(int(np.searchsorted(np.cumsum(pmf), draws[t] * pmf.sum())), len(cands) - 1)
        r = float(stream.uniform[t] < stream.probability[t, a])
        reward[t] = r
        # Costs in [0, 1]: VW's default cost range (--cb_min_cost 0, --cb_max_cost 1), which
        # squarecb's and regcbopt's confidence bounds assume.
        lines[1 + a] = f"0:{1.0 - r}:{pmf[a]:.6f} {lines[1 + a]}"
        vw.learn(lines)
    seconds = time.perf_counter() - started
    vw.finish()
    return {"learner": name, "kind": "vw", "options": f"{VW_OPTIONS[name]} -q UA",
            "rounds": rounds, "seconds": round(seconds, 3),
            "rounds_per_s": round(rounds / seconds, 1), "avg_reward": float(reward.mean()),
            "rewards": reward}


#: Our learners by name: a constructor of the policy for d features.
OURS: dict[str, Callable[[int, int, torch.device], Any]] = {
    "linucb": lambda d, seed, dev: LinUCB(d, alpha=0.5, seed=seed, device=dev),
    "diag-linucb": lambda d, seed, dev: DiagLinUCB(d, alpha=0.5, seed=seed, device=dev),
    "epsilon-greedy": lambda d, seed, dev: EpsilonGreedy(d, epsilon=0.05, seed=seed, device=dev),
    "softmax": lambda d, seed, dev: Softmax(d, temperature=0.05, seed=seed, device=dev),
    "linear-thompson": lambda d, seed, dev: LinearThompsonSampling(
        d, v=0.25, propensity_samples=0, seed=seed, device=dev),
}
HYPERPARAMETERS = {"linucb": "alpha=0.5", "diag-linucb": "alpha=0.5",
                   "epsilon-greedy": "epsilon=0.05", "softmax": "temperature=0.05",
                   "linear-thompson": "v=0.25, propensity_samples=0"}


class Crossing:
    """The features of :class:`bandits.policies.CrossFeatures` (``"outer"``: ``[u, 1] (x)
    [v, 1]``, user-major), written into one buffer that every batch reuses: a fresh
    (B, N, 289) float64 tensor per batch costs more in page faults than the product itself.
    :meth:`check` compares it with ``CrossFeatures`` on a batch."""

    def __init__(self, world: World, batch: int, n: int, device: torch.device) -> None:
        ones = np.ones((1, 1))
        self.users = torch.as_tensor(np.hstack([world.users, ones.repeat(N_USERS, 0)]),
                                     device=device)
        self.items = torch.as_tensor(np.hstack([world.items, ones.repeat(N_ITEMS, 0)]),
                                     device=device)
        self.du, self.di = self.users.shape[1], self.items.shape[1]
        self.buffer = torch.empty((batch, n, self.du, self.di), dtype=torch.float64,
                                  device=device)

    @property
    def n_features(self) -> int:
        return self.du * self.di

    def __call__(self, user: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        b, n = candidates.shape
        out = self.buffer[:b]
        torch.mul(self.users[user][:, None, :, None], self.items[candidates][:, :, None, :],
                  out=out)
        return out.view(b, n, self.n_features)

    def check(self, world: World, user: torch.Tensor, candidates: torch.Tensor) -> None:
        reference = CrossFeatures(world.users, world.items, device=user.device)
        if not torch.equal(self(user, candidates), reference(user, candidates)):
            raise RuntimeError("the benchmark's crossing differs from CrossFeatures'")


def run_ours(name: str, world: World, stream: Stream, rounds: int, batch: int, seed: int,
             device: torch.device, passes: int = 1) -> dict[str, Any]:
    """One of our policies over the first ``rounds`` rounds, ``batch`` rounds per step, from
    a fresh policy ``passes`` times: the fastest pass's rounds/s (a pass takes seconds, and a
    shared machine's hiccup would otherwise decide it); every pass chooses alike."""
    features = Crossing(world, batch, stream.candidates.shape[1], device)
    user = torch.as_tensor(stream.user[:rounds], device=device)
    cands = torch.as_tensor(stream.candidates[:rounds], device=device)
    prob = torch.as_tensor(stream.probability[:rounds], device=device)
    uniform = torch.as_tensor(stream.uniform[:rounds], device=device)
    features.check(world, user[:8], cands[:8])
    best, rewards = float("inf"), None
    for _ in range(passes):
        policy = OURS[name](features.n_features, seed, device)
        generator = torch.Generator(device=device).manual_seed(seed)
        reward = torch.empty(rounds, dtype=torch.float64, device=device)
        _sync(device)
        started = time.perf_counter()
        for lo in range(0, rounds, batch):
            hi = min(rounds, lo + batch)
            x = features(user[lo:hi], cands[lo:hi])  # (B, N, d)
            chosen, _ = policy.select(x, 1, generator)
            chosen = chosen[:, 0]
            rows = torch.arange(hi - lo, device=device)
            r = (uniform[lo:hi] < prob[lo:hi][rows, chosen]).to(torch.float64)
            reward[lo:hi] = r
            policy.partial_fit(x[rows, chosen], r)
        _sync(device)
        best = min(best, time.perf_counter() - started)
        rewards = reward.cpu().numpy()
    return {"learner": name, "kind": "ours", "hyperparameters": HYPERPARAMETERS[name],
            "batch": batch, "rounds": rounds, "passes": passes, "seconds": round(best, 3),
            "rounds_per_s": round(rounds / best, 1), "avg_reward": float(rewards.mean()),
            "rewards": rewards}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stream_section(plan: Plan, seed: int, learners: Sequence[str]) -> dict[str, Any]:
    world = World.make(seed)
    ok, vw_note = vw_available()
    if not ok:
        console.print(f"[yellow]Vowpal Wabbit skipped:[/yellow] {vw_note}")
    shared = _fmt_features("shared |U ", world.users) if ok else []
    actions = _fmt_features("|A ", world.items) if ok else []
    rows: list[dict[str, Any]] = []
    oracle, random_reward, curves = {}, {}, {}
    cpu = torch.device("cpu")
    for n in CANDIDATES:
        rounds = plan.rounds[n]
        step(f"stream: {rounds:,} rounds of {n} candidates")
        stream = Stream.make(world, max(rounds, plan.vw_rounds[n]), n, seed)
        oracle[str(n)], random_reward[str(n)] = stream.oracle, stream.random
        here = []
        if ok:
            for name in VW_OPTIONS:
                vw_rounds = plan.vw_rounds[n]
                step(f"  {name} ({vw_rounds:,} rounds, one example at a time)")
                here.append(run_vw(name, world, stream, vw_rounds, seed, shared, actions))
        for name in learners:
            step(f"  {name} (batches of {plan.batch})")
            here.append(run_ours(name, world, stream, rounds, plan.batch, seed, cpu,
                                 passes=plan.passes))
        common = min(r["rounds"] for r in here)
        for r in here:
            rewards = r.pop("rewards")
            r["candidates"] = n
            r["avg_reward_first_rounds"] = float(rewards[:common].mean())
            r["first_rounds"] = common
            curves[f"{n}/{r['learner']}"] = _curve(rewards)
            rows.append(r)
    return {"stream": rows, "oracle_reward": oracle, "random_reward": random_reward,
            "vw": vw_note if ok else None, "vw_skipped": None if ok else vw_note,
            "curves": curves, "stream_summary": stream_targets(rows)}


def _curve(rewards: np.ndarray, points: int = 50) -> list[list[float]]:
    """Running mean reward at up to ``points`` rounds: [[round, mean], ...]."""
    cum = np.cumsum(rewards)
    at = np.unique(np.geomspace(100, len(rewards), points).astype(int)) if len(
        rewards) > 100 else np.arange(1, len(rewards) + 1)
    return [[int(t), round(float(cum[t - 1] / t), 5)] for t in at]


def stream_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per candidate count: VW's best throughput and reward, and ours against them."""
    out = []
    for n in CANDIDATES:
        vw = [r for r in rows if r["candidates"] == n and r["kind"] == "vw"]
        ours = [r for r in rows if r["candidates"] == n and r["kind"] == "ours"]
        if not vw or not ours:
            continue
        vw_fast = max(r["rounds_per_s"] for r in vw)
        vw_best = max(vw, key=lambda r: r["avg_reward_first_rounds"])
        met = [r for r in ours if r["rounds_per_s"] >= TARGETS["speedup_vs_vw_best"] * vw_fast
               and r["avg_reward_first_rounds"] >= vw_best["avg_reward_first_rounds"]]
        per = [{"learner": r["learner"], "speedup": round(r["rounds_per_s"] / vw_fast, 1),
                "reward_gap": round(r["avg_reward_first_rounds"]
                                    - vw_best["avg_reward_first_rounds"], 4)} for r in ours]
        out.append({"candidates": n, "vw_best_rounds_per_s": vw_fast,
                    "vw_best_reward": vw_best["avg_reward_first_rounds"],
                    "vw_best_reward_learner": vw_best["learner"],
                    "compared_on_first_rounds": vw_best["first_rounds"],
                    "ours": per, "met_by": [r["learner"] for r in met], "met": bool(met)})
    return out


# -- off-policy evaluation ------------------------------------------------------------------
def hgb() -> Any:
    """Gradient-boosted trees, small and shallow: clicks are rare (under 1%)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_iter=100, learning_rate=0.05, max_leaf_nodes=8,
                                          min_samples_leaf=50, random_state=0)


def ope_section(data: Path, runs: int, seed: int, models: Sequence[str]) -> dict[str, Any]:
    from bandits.ope import crossed_logistic, evaluate, logistic_baseline
    from bandits.ope.obd import (
        on_policy_value,
        read_item_context,
        read_obd_log,
        read_policy_dist,
    )

    paths = {"log": data / "random/men/men.csv",
             "item_context": data / "random/men/item_context.csv",
             "policy_dist": data / "bts/men/bts_action_dist.csv",
             "truth": data / "bts/men/men.csv"}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        return {"skipped": f"no OBD sample at {data} (missing {missing[0]}); pass --data DIR"}
    log = read_obd_log(paths["log"], read_item_context(paths["item_context"]),
                       read_policy_dist(paths["policy_dist"]))
    truth = on_policy_value(paths["truth"])
    factories = {"logistic": (logistic_baseline, False), "crossed": (crossed_logistic, True),
                 "hgb": (hgb, False)}
    reports = {}
    for name in models:
        factory, cross = factories[name]
        step(f"OPE: reward model {name}, {runs} bootstrap runs refitted on each")
        started = time.perf_counter()
        report = evaluate(log.data, n_bootstrap=runs, seed=seed, truth=truth,
                          refit=log.refit(factory, cross=cross, folds=3))
        report["seconds"] = round(time.perf_counter() - started, 1)
        # The whole log's estimate against the truth: no resampling luck in it (IPW's does
        # not depend on the reward model at all).
        for entry in report["estimators"].values():
            entry["full_log_relative_error"] = abs(entry["estimate"] - truth) / truth
        reports[name] = report
    return {"truth": truth, "truth_source": "mean click of the BTS log", "n_bootstrap": runs,
            "folds": 3, "paths": {k: str(v) for k, v in paths.items()}, "obp": OBP,
            "default_model": "logistic", "reward_models": reports,
            "estimators": reports.get("logistic", {}).get("estimators", {}),
            "summary": ope_targets(reports)}


def ope_targets(reports: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for model, report in reports.items():
        errors = {name: e["relative_error"]["mean"] for name, e in report["estimators"].items()}
        best = min(errors, key=errors.get)
        worse = [name for name in OBP if name in errors and errors[name] > OBP[name]]
        out[model] = {"best": best, "best_error": round(errors[best], 4),
                      "best_met": errors[best] <= TARGETS["ope_best"],
                      "above_obp": worse, "each_met": not worse}
    return out


# -- GPU --------------------------------------------------------------------------------------
def gpu_section(seed: int, learners: Sequence[str]) -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"skipped": "no GPU here (torch.cuda.is_available() is false)"}
    device = torch.device("cuda")
    world = World.make(seed)
    rows = []
    for n in CANDIDATES:
        # Four steps of the largest batch, so that each batch size times more than one step.
        stream = Stream.make(world, 4 * GPU_BATCHES[-1], n, seed)
        for name in learners:
            for batch in GPU_BATCHES:
                rounds = max(4 * batch, 16_384)
                step(f"GPU: {name}, {n} candidates, batch {batch:,}")
                run_ours(name, world, stream, batch, batch, seed, device)  # warm-up
                row = run_ours(name, world, stream, rounds, batch, seed, device, passes=2)
                row.pop("rewards")
                rows.append({**row, "candidates": n})
    return {"device": torch.cuda.get_device_name(0), "rows": rows}


# -- report, plot ---------------------------------------------------------------------------
def step(what: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {what}")


def report(results: dict[str, Any]) -> None:
    stream = results if "stream" in results else None
    if stream is not None:
        table = Table(title=f"synthetic stream ({USER_DIM} user x {ITEM_DIM} item features; "
                      f"ours in batches of {results['plan']['batch']}, VW one example at a time"
                      f"; torch threads {results['torch_threads']})")
        for col in ("N", "learner", "rounds", "rounds/s", "avg reward",
                    "avg reward, first rounds", "oracle", "random"):
            table.add_column(col, justify="left" if col == "learner" else "right")
        for r in stream["stream"]:
            n = str(r["candidates"])
            table.add_row(n, r["learner"], f"{r['rounds']:,}", f"{r['rounds_per_s']:,.0f}",
                          f"{r['avg_reward']:.4f}",
                          f"{r['avg_reward_first_rounds']:.4f} ({r['first_rounds']:,})",
                          f"{stream['oracle_reward'][n]:.4f}",
                          f"{stream['random_reward'][n]:.4f}")
        console.print(table)
        if stream["vw_skipped"]:
            console.print(f"VW rows skipped: {stream['vw_skipped']}")
        for s in stream["stream_summary"]:
            best = max(s["ours"], key=lambda o: o["speedup"])
            console.print(
                f"N={s['candidates']}: VW best {s['vw_best_rounds_per_s']:,.0f} rounds/s, best "
                f"reward {s['vw_best_reward']:.4f} ({s['vw_best_reward_learner']}, first "
                f"{s['compared_on_first_rounds']:,} rounds); ours up to {best['speedup']}x "
                f"({best['learner']}); target (>= 10x and reward >= VW's best): "
                + (f"met by {', '.join(s['met_by'])}" if s["met"] else "NOT met"))
    ope = results.get("ope")
    if ope is not None and "skipped" in ope:
        console.print(f"OPE: skipped, {ope['skipped']}")
    elif ope is not None:
        models = list(ope["reward_models"])
        table = Table(title=f"OPE on the OBD men sample: BTS from the random log, relative error "
                      f"(mean ± std over {ope['n_bootstrap']} bootstrap runs, reward model "
                      f"refitted on each); truth {ope['truth']:.4g}")
        table.add_column("estimator")
        table.add_column("OBP 0.5.7", justify="right")
        for m in models:
            table.add_column(m, justify="right")
            table.add_column(f"{m}, whole log", justify="right")
        names = list(ope["reward_models"][models[0]]["estimators"])
        for name in names:
            cells = []
            for m in models:
                e = ope["reward_models"][m]["estimators"][name]["relative_error"]
                whole = ope["reward_models"][m]["estimators"][name]["full_log_relative_error"]
                cells += [f"{e['mean']:.3f} ± {e['std']:.3f}", f"{whole:.3f}"]
            table.add_row(name, f"{OBP[name]:.3f}" if name in OBP else "-", *cells)
        console.print(table)
        for m, s in ope["summary"].items():
            console.print(
                f"{m}: best {s['best']} {s['best_error']:.3f} (<= 0.30: "
                f"{'met' if s['best_met'] else 'NOT met'}); each at most OBP's: "
                + ("met" if s["each_met"] else f"NOT met ({', '.join(s['above_obp'])} above)"))
    gpu = results.get("gpu")
    if gpu is not None and "skipped" in gpu:
        console.print(f"GPU: skipped, {gpu['skipped']}")
    elif gpu is not None:
        table = Table(title=f"GPU throughput ({gpu['device']})")
        for col in ("N", "learner", "batch", "rounds/s"):
            table.add_column(col, justify="left" if col == "learner" else "right")
        for r in gpu["rows"]:
            table.add_row(str(r["candidates"]), r["learner"], f"{r['batch']:,}",
                          f"{r['rounds_per_s']:,.0f}")
        console.print(table)


def figure(results: dict[str, Any], path: Path) -> bool:
    """Running mean reward per learner (one panel per candidate count, oracle and random as
    lines), rounds/s against VW's best, and the OPE errors beside OBP's."""
    stream = results if "stream" in results else None
    ope = results.get("ope")
    panels = (len(CANDIDATES) + 1) if stream else 0
    if ope and "reward_models" in ope:
        panels += 1
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.5), squeeze=False)
    axes = list(axes.flat)
    if stream:
        for ax, n in zip(axes, CANDIDATES):
            for key, curve in stream["curves"].items():
                if key.startswith(f"{n}/"):
                    learner = key.split("/", 1)[1]
                    ax.plot([p[0] for p in curve], [p[1] for p in curve], label=learner,
                            linestyle="--" if learner.startswith("vw") else "-")
            ax.axhline(stream["oracle_reward"][str(n)], color="k", linestyle=":",
                       label="oracle")
            ax.axhline(stream["random_reward"][str(n)], color="grey", linestyle=":",
                       label="random")
            ax.set_xscale("log")
            ax.set_title(f"{n} candidates: running mean reward")
            ax.set_xlabel("round")
            ax.legend(fontsize=6)
        ax = axes[len(CANDIDATES)]
        rows = stream["stream"]
        labels = [f"{r['learner']}\nN={r['candidates']}" for r in rows]
        ax.barh(range(len(rows)), [r["rounds_per_s"] for r in rows],
                color=["tab:orange" if r["kind"] == "vw" else "tab:blue" for r in rows])
        ax.set_yticks(range(len(rows)), labels, fontsize=6)
        ax.set_xscale("log")
        ax.set_xlabel("rounds/s (orange: VW, blue: ours)")
    if ope and "reward_models" in ope:
        ax = axes[-1]
        names = list(OBP)
        width = 0.8 / (1 + len(ope["reward_models"]))
        ax.bar(np.arange(len(names)), [OBP[n] for n in names], width, label="OBP 0.5.7")
        for i, (m, rep) in enumerate(ope["reward_models"].items(), start=1):
            ax.bar(np.arange(len(names)) + i * width,
                   [rep["estimators"][n]["relative_error"]["mean"] for n in names], width,
                   label=m)
        ax.axhline(TARGETS["ope_best"], color="red", linestyle=":", label="0.30")
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, fontsize=7)
        ax.set_ylabel("relative error (mean)")
        ax.set_title(f"OBD men, {ope['n_bootstrap']} bootstrap runs")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -- command line -----------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"VW on {QUICK.vw_rounds[10]:,} rounds at 10 candidates and "
                        f"{QUICK.vw_rounds[100]:,} at 100, ours on {QUICK.rounds[10]:,} and "
                        f"{QUICK.rounds[100]:,}; OPE with {QUICK.ope_runs} bootstrap runs and "
                        "the logistic reward model only (under three minutes)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the JSON results go (default: benchmarks/results/"
                        "bandits-quick.json with --quick, else benchmarks/results/bandits.json)"
                        "; the plot goes next to it as .png")
    parser.add_argument("--data", type=Path, default=Path(DEFAULT_DATA),
                        help="the OBD folder (random/men, bts/men); the OPE section is skipped "
                        "when it is absent (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of the stream for our policies at both candidate "
                        f"counts (default: {FULL.rounds[10]:,}, or the quick plan's)")
    parser.add_argument("--vw-rounds", type=int, default=None,
                        help="rounds for each VW learner at both candidate counts (default: "
                        "all of them, or the quick plan's)")
    parser.add_argument("--batch", type=int, default=None,
                        help=f"rounds per step of our policies (default: {FULL.batch})")
    parser.add_argument("--passes", type=int, default=None,
                        help=f"passes of each of our policies over the stream, the fastest "
                        f"timed (default: {FULL.passes}, {QUICK.passes} with --quick)")
    parser.add_argument("--ope-runs", type=int, default=None,
                        help=f"bootstrap runs of OPE (default: {FULL.ope_runs}, "
                        f"{QUICK.ope_runs} with --quick)")
    parser.add_argument("--ope-models", nargs="+", default=None,
                        choices=["logistic", "crossed", "hgb"],
                        help="reward models for OPE: logistic (OBP's), crossed (user x item "
                        "features), hgb (gradient-boosted trees; slow) (default: logistic and "
                        "crossed, logistic only with --quick)")
    parser.add_argument("--learners", nargs="+", default=list(OURS), choices=list(OURS),
                        help="our policies to run (default: all)")
    parser.add_argument("--skip", nargs="+", default=[], choices=SECTIONS,
                        help="sections to leave out")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world, the stream, "
                        "the learners and the bootstrap")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = RESULTS / ("bandits-quick.json" if args.quick else "bandits.json")
    for flag in ("rounds", "vw_rounds", "batch", "passes", "ope_runs"):
        value = getattr(args, flag)
        if value is not None and value < (2 if flag == "ope_runs" else 1):
            parser.error(f"--{flag.replace('_', '-')}={value} must be at least "
                         f"{2 if flag == 'ope_runs' else 1}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    plan = Plan(rounds={n: args.rounds or plan.rounds[n] for n in CANDIDATES},
                vw_rounds={n: args.vw_rounds or plan.vw_rounds[n] for n in CANDIDATES},
                batch=args.batch or plan.batch, ope_runs=args.ope_runs or plan.ope_runs,
                ope_models=tuple(args.ope_models or plan.ope_models),
                passes=args.passes or plan.passes)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "quick": args.quick, "python": platform.python_version(), "torch": torch.__version__,
        "machine": platform.machine(), "cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "plan": {"rounds": plan.rounds, "vw_rounds": plan.vw_rounds, "batch": plan.batch,
                 "ope_runs": plan.ope_runs, "ope_models": plan.ope_models,
                 "passes_of_ours": plan.passes},
        "world": {"user_dim": USER_DIM, "item_dim": ITEM_DIM, "users": N_USERS,
                  "items": N_ITEMS, "click": f"sigmoid(u^T W v / {SCALE} + {BIAS})",
                  "features": "CrossFeatures outer [u,1](x)[v,1] (ours), -q UA (VW)",
                  "seed": args.seed},
        "targets": TARGETS}
    if "stream" not in args.skip:
        section = stream_section(plan, args.seed, args.learners)
        results.update(section)
    if "ope" not in args.skip:
        results["ope"] = ope_section(args.data, plan.ope_runs, args.seed, plan.ope_models)
    if "gpu" not in args.skip:
        step("GPU section")
        results["gpu"] = gpu_section(args.seed, args.learners)
    results["seconds"] = round(time.perf_counter() - started, 1)
    report(results)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(jsonable(results), indent=1, allow_nan=False))
    console.print(f"wrote {out} ({results['seconds']:.0f} s)")
    png = out.with_suffix(".png")
    if figure(results, png):
        console.print(f"wrote {png}")
    return results


if __name__ == "__main__":
    main()

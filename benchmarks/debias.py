"""Debiased and noise-robust learners from implicit feedback: real ratings, simulated unbiased
learning to rank, flipped labels, and the price of Lightning.

1. **Ratings** (the protocol of Saito et al., "Unbiased Recommender Learning from
   Missing-Not-At-Random Implicit Feedback", WSDM 2020). A dataset with a self-selected
   training set and a test set of randomly chosen items (Coat's dense matrices, or
   ``user,item,rating`` triplets: :mod:`ingest.ratings`); a rating >= 4 is a positive. Each
   model trains on the training positives, 10% of them held out: the held-out positives
   early-stop training (validation loss) and choose the hyper-parameters (a small grid per
   model, seed 0 only; the score is the DCG@5 of the held-out positives when each user's
   items other than their training positives are ranked, each held-out positive weighted
   by one over its item's exposure propensity, clipped at 0.1: the held-out positives are
   as missing-not-at-random as the rest, and unweighted they reward ranking the popular
   items that were exposed most; Yang et al., "Unbiased Offline Recommender Evaluation for
   Missing-Not-at-Random Implicit Feedback", RecSys 2018). With the chosen ones, every
   model trains again under each seed and ranks each user's test items; DCG, Recall and MAP
   at 1, 3 and 5 (binary relevance, DCG discount 1/log2(rank + 1)), averaged over the users
   with a positive test item (the others are skipped), then mean and standard deviation
   over the seeds. The test set informs no choice. Skipped, with a note, when the data
   folder does not exist.
2. **Unbiased learning to rank** on :class:`simulation.ltr.RankingExperiment` at three
   severities of position bias (eta): a naive click ranker, IPS (the true examination
   curve), DLA (learns the curve) and an oracle trained on true grades; true nDCG@10 on
   held-out contexts. Target: IPS and DLA within 3% of the oracle at eta = 1.
3. **Noisy labels** on :class:`simulation.implicit.FlippedPositives` with 0%, 10% and 20% of
   the training positives flipped to irrelevant items: true Recall@20 of every model,
   trained with fixed settings (the denoising test's) for a fixed number of epochs (no
   early stopping on a split that holds the same noise); Rel-MF's and UBPR's propensities
   from the training positives' popularity, as on real data.
4. **Training throughput**: MF on one pre-batched data module, trained by Lightning
   (:func:`models.recommenders.fit`, no validation) and by a plain torch loop over the same
   batches with the same optimizer, in the same process; examples (rows and their sampled
   negatives) per second from the first batch to the last step, the best of a few runs
   each, at batches of 1024 rows (the figures the target is judged on) and of 4096 rows (a
   step four times the work, for the share of Lightning's cost that is per step). Target:
   torch / Lightning <= 1.2. A diagnostic: Lightning's whole ``fit`` call (Trainer set-up
   included).

Tables go to the terminal, every number to ``--out`` (JSON) and a plot next to it (PNG).
On a GPU the models train there, and the JSON names the device.

Usage: python benchmarks/debias.py [--quick] [--data DIR] [--name NAME] [--out PATH]
       [--seeds N] [--skip SECTION ...] [--threads N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path and its name would hide the
# `ingest` package: take the folder out.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import numpy as np  # noqa: E402
import pytorch_lightning as lightning  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import (  # noqa: E402
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table  # noqa: E402

from ingest.ratings import Ratings, RatingsError, read_ratings  # noqa: E402
from models.data import InteractionDataModule  # noqa: E402
from models.propensity.popularity import popularity_propensity  # noqa: E402
from models.recommenders import MF, MODELS, FactorizationModel, fit  # noqa: E402
from models.ultr import DLA, IPSListwise  # noqa: E402
from ranking.metrics import (  # noqa: E402
    average_precision_at_k,
    dcg_at_k,
    mean_over_users,
    recall_at_k,
)
from simulation.implicit import FlippedPositives  # noqa: E402
from simulation.ltr import RankingExperiment  # noqa: E402

REPO = _HERE.parent
DEFAULT_DATA = "../shared/data/coat"
DEFAULT_OUT = "benchmarks/results/debias.json"
SECTIONS = ("ratings", "ultr", "noise", "throughput")
# Wide enough for the tables when the output is not a terminal (a log, CI).
console = Console(width=max(shutil.get_terminal_size((150, 40)).columns, 150))

#: Every model by the name the tables and the JSON give it, in table order.
NAMES: dict[str, str] = {"MF": "mf", "MF-MSE": "mf-mse", "BPR": "bpr", "Rel-MF": "rel-mf",
                         "UBPR": "ubpr", "T-CE": "t-ce", "R-CE": "r-ce", "NBPO": "nbpo",
                         "PLD": "pld"}
#: Models that take clicks at face value, and those that correct exposure bias (Rel-MF,
#: UBPR) or label noise (the rest): the goals compare the best of each group.
NAIVE = ("MF", "MF-MSE", "BPR")
CORRECTED = ("Rel-MF", "UBPR", "T-CE", "R-CE", "NBPO", "PLD")
ETAS = (0.5, 1.0, 2.0)
NOISE_SHARES = (0.0, 0.1, 0.2)
ULTR_METHODS = ("naive", "ips", "dla", "oracle")


# --- settings --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Grid:
    """Hyper-parameter values tried per model: ``shared`` by every model (their product),
    and each model's ``own`` (by its name), crossed with the shared ones."""

    shared: Mapping[str, tuple[Any, ...]]
    own: Mapping[str, Mapping[str, tuple[Any, ...]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for where, values in [("shared", self.shared), *self.own.items()]:
            empty = [name for name, options in values.items() if not options]
            if empty:
                raise ValueError(f"grid {where}[{empty[0]!r}]=() must list at least one value")
        unknown = set(self.own) - set(NAMES)
        if unknown:
            raise ValueError(f"grid own={sorted(unknown)} must name models of {list(NAMES)}")

    def candidates(self, model: str) -> list[dict[str, Any]]:
        """Every combination for ``model``."""
        values = {**self.shared, **self.own.get(model, {})}
        return [dict(zip(values, combo, strict=True))
                for combo in itertools.product(*values.values())]


@dataclass(frozen=True)
class Budget:
    """How much each section does. Ratings: ``seeds`` test runs per model, the grid, epochs
    and patience of early stopping, rows per batch. Unbiased LTR: logged lists, epochs,
    held-out contexts. Noise: the world's size and the epochs. Throughput: training rows,
    epochs, and runs of each loop (the best counts)."""

    seeds: int
    grid: Grid
    max_epochs: int
    patience: int
    batch_size: int
    ultr_lists: int
    ultr_epochs: int
    ultr_contexts: int
    noise_users: int
    noise_items: int
    noise_epochs: int
    throughput_rows: int
    throughput_epochs: int
    throughput_runs: int

    def __post_init__(self) -> None:
        for name in ("seeds", "max_epochs", "batch_size", "ultr_lists", "ultr_epochs",
                     "ultr_contexts", "noise_users", "noise_items", "noise_epochs",
                     "throughput_rows", "throughput_epochs", "throughput_runs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.patience < 0:
            raise ValueError(f"patience={self.patience} must be >= 0")


FULL = Budget(
    seeds=5,
    grid=Grid(shared={"dim": (16, 64), "lr": (3e-3, 1e-2),
                      "weight_decay": (1e-6, 1e-4, 1e-2)},
              own={"Rel-MF": {"clip": (0.05, 0.2, 0.5)}, "UBPR": {"clip": (0.05, 0.2, 0.5)},
                   "T-CE": {"max_drop_rate": (0.1, 0.2)},
                   "R-CE": {"beta": (0.1, 0.25)}, "NBPO": {"init_flip": (0.02, 0.1)},
                   "PLD": {"temperature": (0.1, 0.3)}}),
    max_epochs=100, patience=5, batch_size=256,
    ultr_lists=40_000, ultr_epochs=30, ultr_contexts=2000,
    noise_users=1000, noise_items=500, noise_epochs=30,
    throughput_rows=400_000, throughput_epochs=2, throughput_runs=3)
QUICK = Budget(
    seeds=2,
    grid=Grid(shared={"dim": (32,), "lr": (1e-2,), "weight_decay": (1e-6, 1e-3)}),
    max_epochs=30, patience=3, batch_size=256,
    ultr_lists=6000, ultr_epochs=8, ultr_contexts=500,
    noise_users=400, noise_items=300, noise_epochs=10,
    throughput_rows=100_000, throughput_epochs=1, throughput_runs=2)


@dataclass(frozen=True)
class Protocol:
    """The ratings protocol's fixed settings: a rating >= ``threshold`` is a positive;
    ``val_fraction`` of the training positives are held out; metrics at ``cutoffs``; sampled
    negatives per row for pointwise and pairwise models; Rel-MF's propensities are Saito's
    ``(n_i / max n) ** eta`` from the training positives; the selection score is DCG at
    ``select_at`` of the held-out positives, each weighted by one over its propensity
    clipped at ``select_clip`` (1: unweighted)."""

    threshold: int = 4
    val_fraction: float = 0.1
    cutoffs: tuple[int, ...] = (1, 3, 5)
    pointwise_negatives: int = 4
    pairwise_negatives: int = 1
    eta: float = 0.5
    select_at: int = 5
    select_clip: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction={self.val_fraction} must be in (0, 1)")
        if not self.cutoffs or min(self.cutoffs) < 1:
            raise ValueError(f"cutoffs={self.cutoffs} must be positive integers")
        if self.pointwise_negatives < 1 or self.pairwise_negatives < 1:
            raise ValueError(f"pointwise_negatives={self.pointwise_negatives}, "
                             f"pairwise_negatives={self.pairwise_negatives}: need >= 1")
        if not 0 < self.select_clip <= 1:
            raise ValueError(f"select_clip={self.select_clip} must be in (0, 1]")
        if self.eta < 0 or self.select_at < 1:
            raise ValueError(f"eta={self.eta}, select_at={self.select_at}: need eta >= 0 and "
                             "select_at >= 1")

    def metric_names(self) -> list[str]:
        return [f"{metric}@{k}" for metric in ("DCG", "Recall", "MAP") for k in self.cutoffs]


# --- quiet training ----------------------------------------------------------------------------

def quiet_lightning() -> None:
    """Lightning reports the accelerator on every Trainer; hundreds of fits would bury the
    tables."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric",
                 "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Training without a validation split hands Lightning an empty list of loaders: meant.
    warnings.filterwarnings("ignore", message=".*Total length of `list` across ranks is zero")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


@contextmanager
def progress_bar() -> Iterator[Progress]:
    # No refresh thread: the display is redrawn when a step ends, so nothing runs beside
    # the training being timed.
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, auto_refresh=False) as progress:
        yield progress


def advance(progress: Progress | None, task: Any, description: str | None = None) -> None:
    if progress is None:
        return
    if description is not None:
        progress.update(task, description=description)
    progress.advance(task)
    progress.refresh()
    if not console.is_terminal:
        # A log file gets no live display until the end: a line per step instead.
        done = progress.tasks[task]
        console.print(f"[dim]{done.description} ({done.completed:.0f}/{done.total:.0f}, "
                      f"{done.elapsed or 0:.0f} s)[/dim]")


# --- 1. ratings ------------------------------------------------------------------------------

@dataclass(frozen=True)
class UserLists:
    """Each test user's rated items, padded: ``items`` (U, L) (0 on padding), ``relevance``
    (U, L) 1 for a positive, 0 for another rating, NaN on padding; ``users`` (U,)."""

    users: np.ndarray
    items: np.ndarray
    relevance: np.ndarray

    @property
    def n_relevant(self) -> np.ndarray:
        return np.nansum(self.relevance, axis=1)


def user_lists(ratings: Ratings, threshold: int) -> UserLists:
    """The test split as one padded list per user that rated something in it; a rating
    >= ``threshold`` is relevant."""
    frame = ratings.test.sort("user", "item")
    users = frame["user"].to_numpy()
    items = frame["item"].to_numpy()
    positive = (frame["rating"].to_numpy() >= threshold).astype(np.float64)
    listed, start, count = np.unique(users, return_index=True, return_counts=True)
    row = np.repeat(np.arange(len(listed)), count)
    slot = np.arange(len(users)) - np.repeat(start, count)
    padded_items = np.zeros((len(listed), count.max()), dtype=np.int64)
    relevance = np.full(padded_items.shape, np.nan)
    padded_items[row, slot] = items
    relevance[row, slot] = positive
    return UserLists(listed, padded_items, relevance)


def ranking_metrics(model: FactorizationModel, lists: UserLists,
                 cutoffs: Sequence[int]) -> dict[str, float]:
    """DCG, Recall and MAP at each cutoff of each user's test items ranked by ``model``,
    averaged over the users with a positive test item."""
    scores = model.score(lists.users[:, None].repeat(lists.items.shape[1], 1),
                         lists.items).cpu().numpy()
    scores[np.isnan(lists.relevance)] = -np.inf  # padding ranks last
    order = np.argsort(-scores, axis=1, kind="stable")
    ranked = np.take_along_axis(lists.relevance, order, axis=1)
    n = lists.n_relevant
    values: dict[str, float] = {}
    for metric, compute in (("DCG", lambda k: dcg_at_k(ranked, k)),
                            ("Recall", lambda k: recall_at_k(ranked, n, k)),
                            ("MAP", lambda k: average_precision_at_k(ranked, n, k))):
        for k in cutoffs:
            values[f"{metric}@{k}"] = mean_over_users(compute(k), n)
    return values


def training_positives(ratings: Ratings, protocol: Protocol) -> tuple[np.ndarray, np.ndarray,
                                                                    np.ndarray]:
    """(users, items, Rel-MF propensities) of the training split's positives."""
    positives = ratings.train.filter(ratings.train["rating"] >= protocol.threshold)
    if positives.height == 0:
        raise ValueError(f"{ratings.name}: no training rating >= {protocol.threshold}")
    users, items = positives["user"].to_numpy(), positives["item"].to_numpy()
    counts = np.bincount(items, minlength=ratings.n_items)
    return users, items, popularity_propensity(counts, protocol.eta)[items]


def data_module(model: str, users: np.ndarray, items: np.ndarray, propensities: np.ndarray,
                n_users: int, n_items: int, seed: int, batch_size: int,
                protocol: Protocol) -> InteractionDataModule:
    mode = MODELS[NAMES[model]].mode
    return InteractionDataModule(
        users, items, propensities=propensities, n_users=n_users, n_items=n_items, mode=mode,
        negatives=(protocol.pointwise_negatives if mode == "pointwise"
                   else protocol.pairwise_negatives),
        batch_size=batch_size, val_fraction=protocol.val_fraction, seed=seed)


def make_model(model: str, n_users: int, n_items: int, options: Mapping[str, Any], seed: int,
               steps_per_epoch: int, max_epochs: int) -> FactorizationModel:
    """``model`` with ``options`` (the grid's), and the schedules that follow the run's
    length: T-CE's drop rate ramps up over the first fifth of the epochs; PLD trains as
    plain BPR for a fifth of the epochs (at least one, at most five, the authors' warm-up)
    before it resamples."""
    extra: dict[str, Any] = {}
    if model == "T-CE":
        extra["warmup_steps"] = steps_per_epoch * max(1, max_epochs // 5)
    if model == "PLD":
        extra["warmup_epochs"] = min(5, max(1, max_epochs // 5))
    return MODELS[NAMES[model]](n_users, n_items, **options, **extra, seed=seed)  # type: ignore


def validation_dcg(model: FactorizationModel, data: InteractionDataModule, k: int,
                   clip: float = 1.0) -> float:
    """DCG@k of the held-out training positives: each user's items other than their
    training positives ranked by the model, each held-out positive's gain one over its
    propensity clipped at ``clip``, averaged over users with a held-out one."""
    data.setup("fit")
    assert data.val is not None
    held_users, held_items = data.val.users.numpy(), data.val.items.numpy()
    weights = 1.0 / np.clip(data.val.propensities.numpy(), clip, 1.0)
    users = np.unique(held_users)
    train_users, train_items = data.train_pairs()
    top, _ = model.recommend(users, k, exclude=(train_users, train_items))
    gains = np.zeros((len(users), data.n_items))
    gains[np.searchsorted(users, held_users), held_items] = weights
    ranked = np.take_along_axis(gains, top.cpu().numpy(), axis=1)
    return mean_over_users(dcg_at_k(ranked, k), (gains > 0).sum(axis=1))


def train_ratings_model(model: str, options: Mapping[str, Any], positives: tuple[np.ndarray, ...],
                        ratings: Ratings, seed: int, budget: Budget, protocol: Protocol
                        ) -> tuple[FactorizationModel, InteractionDataModule]:
    users, items, propensities = positives
    data = data_module(model, users, items, propensities, ratings.n_users, ratings.n_items, seed,
                       budget.batch_size, protocol)
    data.setup("fit")
    assert data.train is not None
    steps = math.ceil(len(data.train) / budget.batch_size)
    learner = make_model(model, ratings.n_users, ratings.n_items, options, seed, steps,
                         budget.max_epochs)
    fit(learner, data, max_epochs=budget.max_epochs, patience=budget.patience, seed=seed)
    return learner, data


def select_options(model: str, ratings: Ratings, positives: tuple[np.ndarray, ...],
                   budget: Budget, protocol: Protocol,
                   step: Callable[[str], None]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The grid's best options for ``model`` by validation DCG (seed 0), and every trial."""
    trials = []
    for options in budget.grid.candidates(model):
        learner, data = train_ratings_model(model, options, positives, ratings, 0, budget,
                                            protocol)
        score = validation_dcg(learner, data, protocol.select_at, protocol.select_clip)
        trials.append({"options": options, f"val_DCG@{protocol.select_at}": score})
        step(f"{ratings.name}: {model} grid")
    best = max(trials, key=lambda trial: trial[f"val_DCG@{protocol.select_at}"])
    return dict(best["options"]), trials


def ratings_section(ratings: Ratings, budget: Budget, protocol: Protocol = Protocol(),
                    models: Sequence[str] = tuple(NAMES),
                    progress: Progress | None = None) -> dict[str, Any]:
    """The ratings protocol on one dataset (module doc, section 1): ``{"metrics": {MODEL:
    {METRIC: {"mean", "std", "runs"}}}, "chosen": {MODEL: options}, "trials": ...,
    "users": ...}``."""
    unknown = [model for model in models if model not in NAMES]
    if unknown:
        raise ValueError(f"models={unknown} must be among {list(NAMES)}")
    positives = training_positives(ratings, protocol)
    lists = user_lists(ratings, protocol.threshold)
    per_model = {model: len(budget.grid.candidates(model)) + budget.seeds for model in models}
    task = (progress.add_task(f"{ratings.name}: ratings", total=sum(per_model.values()))
            if progress is not None else None)

    def step(description: str) -> None:
        advance(progress, task, description)

    result: dict[str, Any] = {"metrics": {}, "chosen": {}, "trials": {}}
    for model in models:
        chosen, trials = select_options(model, ratings, positives, budget, protocol, step)
        result["chosen"][model], result["trials"][model] = chosen, trials
        runs = []
        for seed in range(budget.seeds):
            learner, _ = train_ratings_model(model, chosen, positives, ratings, seed, budget,
                                             protocol)
            runs.append(ranking_metrics(learner, lists, protocol.cutoffs))
            step(f"{ratings.name}: {model} seed {seed}")
        result["metrics"][model] = {name: summary([run[name] for run in runs])
                                    for name in protocol.metric_names()}
    with_positive = int((lists.n_relevant > 0).sum())
    result["users"] = {"all": ratings.n_users, "with_test_items": len(lists.users),
                       "evaluated": with_positive,
                       "skipped_without_positive_test_item": ratings.n_users - with_positive}
    result["positives"] = {"train": len(positives[0]),
                           "test": int(np.nansum(lists.relevance))}
    result["goals"] = ratings_goals(result["metrics"])
    return result


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation over seeds (0 for a single seed), and the runs."""
    runs = np.asarray(values, dtype=np.float64)
    std = float(runs.std(ddof=1)) if len(runs) > 1 else 0.0
    return {"mean": float(runs.mean()), "std": std, "runs": runs.tolist()}


def ratings_goals(metrics: Mapping[str, Mapping[str, Mapping[str, Any]]],
                  metric: str = "DCG@5") -> dict[str, Any]:
    """The section's goals on ``metric``, where the models they name were run. "By more
    than one std" and "level" take the larger of the two models' standard deviations over
    seeds: Rel-MF above MF-MSE by more than it; the best corrected model (Rel-MF or a
    denoising one) and Rel-MF alone not below the best naive one by more than it."""
    goals: dict[str, Any] = {"metric": metric}

    def compare(a: str, b: str) -> tuple[float, float]:
        first, second = metrics[a][metric], metrics[b][metric]
        return first["mean"] - second["mean"], max(first["std"], second["std"])

    if "Rel-MF" in metrics and "MF-MSE" in metrics:
        gap, std = compare("Rel-MF", "MF-MSE")
        goals |= {"rel_mf_minus_mf_mse": gap, "rel_mf_vs_mf_mse_std": std,
                  "rel_mf_above_mf_mse_by_one_std": gap > std}
    if "UBPR" in metrics and "BPR" in metrics:
        gap, std = compare("UBPR", "BPR")
        goals |= {"ubpr_minus_bpr": gap, "ubpr_vs_bpr_std": std}
    naive = [m for m in NAIVE if m in metrics]
    corrected = [m for m in CORRECTED if m in metrics]
    if naive and corrected:
        best_naive = max(naive, key=lambda m: metrics[m][metric]["mean"])
        best = max(corrected, key=lambda m: metrics[m][metric]["mean"])
        gap, std = compare(best, best_naive)
        goals |= {"best_naive": best_naive, "best_corrected": best,
                  "corrected_minus_naive": gap, "corrected_vs_naive_std": std,
                  "corrected_level_with_naive": gap >= -std}
        if "Rel-MF" in metrics:
            gap, std = compare("Rel-MF", best_naive)
            goals |= {"rel_mf_minus_best_naive": gap, "rel_mf_vs_naive_std": std,
                      "rel_mf_level_with_naive": gap >= -std}
    return goals


# --- 2. unbiased learning to rank -----------------------------------------------------------

def ultr_section(budget: Budget, etas: Sequence[float] = ETAS,
                 progress: Progress | None = None) -> dict[str, Any]:
    """True nDCG@10 of naive, IPS, DLA and oracle rankers per eta (module doc, section 2):
    ``{eta: {method: nDCG}}``."""
    task = (progress.add_task("unbiased LTR", total=len(etas) * len(ULTR_METHODS))
            if progress is not None else None)
    result: dict[str, Any] = {}
    for eta in etas:
        experiment = RankingExperiment(eta=eta)
        rows = experiment.rows(experiment.log(budget.ultr_lists))
        clicks = experiment.lists(rows, examination=experiment.examination)
        truth = experiment.lists(rows, labels="grade")
        held_out = experiment.held_out(budget.ultr_contexts)
        n = clicks.n_features
        # The naive ranker and DLA ignore the propensities the click lists carry.
        rankers = {"naive": (IPSListwise(n, ips=False), clicks),
                   "ips": (IPSListwise(n), clicks),
                   "dla": (DLA(n, n_positions=experiment.k, exam_lr=3e-2), clicks),
                   "oracle": (IPSListwise(n, ips=False), truth)}
        scores: dict[str, Any] = {}
        for method, pair in rankers.items():
            judged = experiment.train_and_judge({method: pair}, held_out,
                                                max_epochs=budget.ultr_epochs)
            scores[method] = judged[method].mean
            advance(progress, task, f"unbiased LTR: eta {eta:g}, {method}")
        result[eta_key(eta)] = scores
    return result


def ultr_targets(result: Mapping[str, Mapping[str, float]]) -> dict[str, bool]:
    """IPS and DLA within 3% of the oracle at eta = 1 (when that eta was run)."""
    at_one = result.get(eta_key(1.0))
    if at_one is None:
        return {}
    return {f"{m}_within_3pct_of_oracle_at_eta_1": at_one[m] >= 0.97 * at_one["oracle"]
            for m in ("ips", "dla")}


def eta_key(eta: float) -> str:
    return f"{eta:g}"


# --- 3. noisy labels -------------------------------------------------------------------------

#: Fixed settings of the noise section: the denoising test's (each denoiser's own chosen on a
#: development world of another seed, never on this one; T-CE ramps over the whole run), and
#: Rel-MF's default clip.
NOISE_SHARED = {"dim": 16, "lr": 0.01, "weight_decay": 1e-4}
NOISE_OWN: dict[str, dict[str, Any]] = {"Rel-MF": {"clip": 0.1}, "UBPR": {"clip": 0.1},
                                        "T-CE": {"max_drop_rate": 0.2},
                                        "R-CE": {"beta": 0.1}, "NBPO": {"init_flip": 0.02},
                                        "PLD": {"temperature": 0.3, "candidates": 5}}
NOISE_K = 20
NOISE_BATCH = 1024


def noise_section(budget: Budget, shares: Sequence[float] = NOISE_SHARES,
                  models: Sequence[str] = tuple(NAMES),
                  progress: Progress | None = None) -> dict[str, Any]:
    """True Recall@20 of each model per share of flipped positives (module doc, section 3):
    ``{share: {MODEL: recall}}``."""
    task = (progress.add_task("noisy labels", total=len(shares) * len(models))
            if progress is not None else None)
    result: dict[str, Any] = {}
    for share in shares:
        world = FlippedPositives(n_users=budget.noise_users, n_items=budget.noise_items,
                                 share=share, seed=0)
        counts = np.bincount(world.noisy, minlength=world.n_items)
        # Rel-MF's propensities as on real data: from the (noisy) training positives.
        propensities = popularity_propensity(counts, 0.5)[world.noisy]
        steps = budget.noise_epochs * math.ceil(len(world.users) / NOISE_BATCH)
        recalls: dict[str, float] = {}
        for model in models:
            kind = MODELS[NAMES[model]]
            data = InteractionDataModule(
                world.users, world.noisy, propensities=propensities, n_users=world.n_users,
                n_items=world.n_items, mode=kind.mode,
                negatives=4 if kind.mode == "pointwise" else 1, batch_size=NOISE_BATCH,
                val_fraction=0.0, seed=0)
            own = dict(NOISE_OWN.get(model, {}))
            if model == "T-CE":
                own["warmup_steps"] = steps
            if model == "PLD":
                own["warmup_epochs"] = min(5, max(1, budget.noise_epochs // 5))
            learner = kind(world.n_users, world.n_items, **NOISE_SHARED, **own,  # type: ignore
                           seed=0)
            fit(learner, data, max_epochs=budget.noise_epochs, seed=0)
            top, _ = learner.recommend(np.arange(world.n_users), NOISE_K,
                                       exclude=world.excluded())
            recalls[model] = world.recall(top.cpu().numpy(), NOISE_K)
            advance(progress, task, f"noisy labels: {share:.0%} flipped, {model}")
        result[f"{share:.1f}"] = recalls
    return result


# --- 4. throughput ---------------------------------------------------------------------------

THROUGHPUT_BATCHES = (1024, 4096)


def throughput_data(rows: int, batch_size: int, seed: int = 0) -> InteractionDataModule:
    """``rows`` distinct (user, item) positives, items drawn by a power law as in real logs;
    pointwise batches of ``batch_size`` rows and 4 negatives each, no validation split."""
    rng = np.random.default_rng(seed)
    n_users, n_items = max(100, rows // 40), max(100, rows // 100)
    weights = 1.0 / np.arange(1, n_items + 1) ** 0.8
    users = rng.integers(0, n_users, 2 * rows)
    items = rng.choice(n_items, 2 * rows, p=weights / weights.sum())
    pairs = np.unique(users * n_items + items)[:rows]
    pairs = rng.permutation(pairs)
    return InteractionDataModule(pairs // n_items, pairs % n_items, n_users=n_users,
                                 n_items=n_items, negatives=4, batch_size=batch_size,
                                 val_fraction=0.0, seed=seed)


class _Span(lightning.Callback):
    """Wall time from the start of the first training batch to the end of training, and the
    examples trained on (synchronized once at the end: a GPU's queue must be drained, but a
    wait after every step would slow what is measured)."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.end = 0.0
        self.examples = 0

    def on_train_batch_start(self, trainer: lightning.Trainer, module: Any, batch: Any,
                             batch_idx: int) -> None:
        if self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: lightning.Trainer, module: Any, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self.examples += len(batch["users"])

    def on_train_end(self, trainer: lightning.Trainer, module: Any) -> None:
        _synchronize()
        self.end = time.perf_counter()


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def lightning_rate(rows: int, epochs: int, batch_size: int) -> tuple[float, float]:
    """(examples/s from the first batch to the last step, examples/s of the whole ``fit``
    call) of MF trained by Lightning."""
    data = throughput_data(rows, batch_size)
    model = MF(data.n_users, data.n_items, seed=0)
    span = _Span()
    started = time.perf_counter()
    fit(model, data, max_epochs=epochs, seed=0, callbacks=[span])
    _synchronize()
    whole = time.perf_counter() - started
    assert span.start is not None
    return span.examples / (span.end - span.start), span.examples / whole


def torch_rate(rows: int, epochs: int, batch_size: int) -> float:
    """Examples/s of MF trained by a plain loop over the same batches: the data module's own
    loader, the model's losses and optimizer, nothing else."""
    data = throughput_data(rows, batch_size)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = MF(data.n_users, data.n_items, seed=0).to(device)
    optimizer = model.configure_optimizers()
    loader = data.train_dataloader()
    model.train()
    examples, start = 0, None
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        for batch in loader:
            if start is None:
                start = time.perf_counter()
            batch = {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}
            loss, penalty = model.losses(batch)
            optimizer.zero_grad(set_to_none=True)
            (loss + penalty).backward()
            optimizer.step()
            examples += len(batch["users"])
    _synchronize()
    assert start is not None
    return examples / (time.perf_counter() - start)


def throughput_section(budget: Budget, progress: Progress | None = None) -> dict[str, Any]:
    """Examples/s of Lightning and of the plain loop, the best of ``throughput_runs`` runs
    each, taken in turn so that both meet the same disturbances, at each of
    ``THROUGHPUT_BATCHES`` (module doc, section 4); the top-level figures are the first's."""
    task = (progress.add_task("throughput", total=2 * budget.throughput_runs
                              * len(THROUGHPUT_BATCHES)) if progress is not None else None)
    rows, epochs = budget.throughput_rows, budget.throughput_epochs
    by_batch: dict[str, dict[str, Any]] = {}
    for batch_size in THROUGHPUT_BATCHES:
        runs: dict[str, list[float]] = {"torch": [], "lightning": [], "lightning_whole_fit": []}
        for _ in range(budget.throughput_runs):
            runs["torch"].append(torch_rate(rows, epochs, batch_size))
            advance(progress, task, f"throughput: torch loop, batches of {batch_size}")
            span, whole = lightning_rate(rows, epochs, batch_size)
            runs["lightning"].append(span)
            runs["lightning_whole_fit"].append(whole)
            advance(progress, task, f"throughput: Lightning, batches of {batch_size}")
        best = {name: max(values) for name, values in runs.items()}
        by_batch[str(batch_size)] = {
            "lightning": best["lightning"], "torch": best["torch"],
            "overhead": best["torch"] / best["lightning"],
            "lightning_whole_fit": best["lightning_whole_fit"],
            "overhead_whole_fit": best["torch"] / best["lightning_whole_fit"],
            "examples_per_batch": batch_size * 5, "runs": runs}
    first = by_batch[str(THROUGHPUT_BATCHES[0])]
    return {"lightning": first["lightning"], "torch": first["torch"],
            "overhead": first["overhead"], "by_batch_rows": by_batch,
            "rows": rows, "epochs": epochs, "negatives": 4,
            "target_overhead": 1.2, "met": first["overhead"] <= 1.2}


# --- tables, figure, main --------------------------------------------------------------------

def ratings_table(name: str, result: Mapping[str, Any], protocol: Protocol) -> Table:
    users = result["users"]
    table = Table(title=f"{name}: test ranking, mean ± std over seeds "
                  f"({users['evaluated']} users with a positive test item; "
                  f"{users['skipped_without_positive_test_item']} skipped)")
    table.add_column("model")
    for metric in protocol.metric_names():
        table.add_column(metric, justify="right")
    for model, metrics in result["metrics"].items():
        table.add_row(model, *(f"{metrics[m]['mean']:.3f} ± {_short(metrics[m]['std'])}"
                               for m in protocol.metric_names()))
    return table


def _short(value: float) -> str:
    """A small non-negative number without its leading zero, to keep the columns narrow."""
    text = f"{value:.3f}"
    return text[1:] if text.startswith("0.") else text


def chosen_table(name: str, result: Mapping[str, Any], protocol: Protocol) -> Table:
    table = Table(title=f"{name}: hyper-parameters chosen by validation "
                  f"DCG@{protocol.select_at} (held-out training positives, seed 0)")
    for column in ("model", "chosen", f"val DCG@{protocol.select_at}", "grid size"):
        table.add_column(column, justify="left" if column in ("model", "chosen") else "right")
    key = f"val_DCG@{protocol.select_at}"
    for model, options in result["chosen"].items():
        best = max(trial[key] for trial in result["trials"][model])
        table.add_row(model, ", ".join(f"{k}={v:g}" for k, v in options.items()),
                      f"{best:.3f}", str(len(result["trials"][model])))
    return table


def goals_line(goals: Mapping[str, Any]) -> str:
    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    parts = []
    if "rel_mf_minus_mf_mse" in goals:
        parts.append(f"Rel-MF − MF-MSE = {goals['rel_mf_minus_mf_mse']:+.3f}, larger std "
                     f"{goals['rel_mf_vs_mf_mse_std']:.3f} (above by more than one std: "
                     f"{yes(goals['rel_mf_above_mf_mse_by_one_std'])})")
    if "ubpr_minus_bpr" in goals:
        parts.append(f"UBPR − BPR = {goals['ubpr_minus_bpr']:+.3f}, larger std "
                     f"{goals['ubpr_vs_bpr_std']:.3f}")
    if "best_naive" in goals:
        parts.append(f"best corrected ({goals['best_corrected']}) − best naive "
                     f"({goals['best_naive']}) = {goals['corrected_minus_naive']:+.3f}, "
                     f"larger std {goals['corrected_vs_naive_std']:.3f} "
                     f"(level: {yes(goals['corrected_level_with_naive'])})")
    if "rel_mf_minus_best_naive" in goals:
        parts.append(f"Rel-MF − best naive = {goals['rel_mf_minus_best_naive']:+.3f}, larger "
                     f"std {goals['rel_mf_vs_naive_std']:.3f} "
                     f"(level: {yes(goals['rel_mf_level_with_naive'])})")
    return f"goals on {goals['metric']}: " + "; ".join(parts)


def ultr_table(result: Mapping[str, Any]) -> Table:
    table = Table(title="unbiased LTR: true nDCG@10 on held-out contexts")
    table.add_column("eta")
    for method in ULTR_METHODS:
        table.add_column(method, justify="right")
    table.add_column("IPS / oracle", justify="right")
    table.add_column("DLA / oracle", justify="right")
    for eta, scores in result.items():
        table.add_row(eta, *(f"{scores[m]:.4f}" for m in ULTR_METHODS),
                      f"{scores['ips'] / scores['oracle']:.3f}",
                      f"{scores['dla'] / scores['oracle']:.3f}")
    return table


def noise_table(result: Mapping[str, Mapping[str, float]]) -> Table:
    table = Table(title=f"noisy labels: true Recall@{NOISE_K} by share of flipped positives")
    models = list(next(iter(result.values())))
    table.add_column("flipped")
    for model in models:
        table.add_column(model, justify="right")
    for share, recalls in result.items():
        table.add_row(f"{float(share):.0%}", *(f"{recalls[m]:.4f}" for m in models))
    return table


def throughput_table(result: Mapping[str, Any]) -> Table:
    table = Table(title="training throughput, MF, examples/s (best of "
                  f"{len(next(iter(result['by_batch_rows'].values()))['runs']['torch'])} runs)")
    for column in ("batch rows", "Lightning", "plain torch loop",
                   "overhead (torch / Lightning)", "whole fit call", "target", "met"):
        table.add_column(column, justify="right")
    for rows, figures in result["by_batch_rows"].items():
        judged = rows == str(THROUGHPUT_BATCHES[0])
        table.add_row(rows, f"{figures['lightning']:,.0f}", f"{figures['torch']:,.0f}",
                      f"{figures['overhead']:.2f}", f"{figures['overhead_whole_fit']:.2f}",
                      f"≤ {result['target_overhead']}" if judged else "",
                      ("yes" if result["met"] else "no") if judged else "")
    return table


def figure(results: Mapping[str, Any], path: Path) -> bool:
    """Ratings DCG@5 with std bars, nDCG@10 by eta, Recall@20 by flipped share; False when
    there is nothing to draw."""
    panels = [name for name in ("ratings", "ultr", "noise") if results.get(name)]
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "ratings":
            width = 0.8 / len(results["ratings"])
            lows = []
            for offset, (name, models) in enumerate(results["ratings"].items()):
                labels = list(models)
                means = np.array([models[m]["DCG@5"]["mean"] for m in labels])
                stds = np.array([models[m]["DCG@5"]["std"] for m in labels])
                x = np.arange(len(labels)) + offset * width
                ax.bar(x, means, width, yerr=stds, capsize=3, label=name)
                ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels, rotation=45)
                lows.append(float((means - stds).min()))
            # The differences are small next to the values: the axis starts near them.
            ax.set_ylim(bottom=0.9 * min(lows))
            ax.set_ylabel("test DCG@5, mean ± std over seeds")
            ax.legend()
            ax.set_title("ratings (the axis does not start at 0)")
        elif panel == "ultr":
            etas = list(results["ultr"])
            for method in ULTR_METHODS:
                ax.plot([float(e) for e in etas], [results["ultr"][e][method] for e in etas],
                        marker="o", label=method)
            ax.set_xlabel("eta (position-bias severity)")
            ax.set_ylabel("true nDCG@10")
            ax.set_xscale("log", base=2)
            ax.set_xticks([float(e) for e in etas], etas)
            ax.minorticks_off()
            ax.legend()
            ax.set_title("unbiased LTR")
        else:
            shares = list(results["noise"])
            for model in results["noise"][shares[0]]:
                ax.plot([float(s) for s in shares], [results["noise"][s][model] for s in shares],
                        marker="o", label=model)
            ax.set_xticks([float(s) for s in shares], [f"{float(s):.0%}" for s in shares])
            ax.set_xlabel("training positives flipped")
            ax.set_ylabel(f"true Recall@{NOISE_K}")
            ax.legend(fontsize="small", ncol=2)
            ax.set_title("noisy labels")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def device_name() -> str:
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {platform.processor() or platform.machine()}"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Sections, in order: ratings (needs --data), ultr, noise, throughput. "
               "See benchmarks/README.md for what each table means.")
    parser.add_argument("--quick", action="store_true",
                        help="smaller runs of every section (fewer seeds, a tiny grid, fewer "
                             "lists and epochs): a smoke test of a few minutes")
    parser.add_argument("--data", type=Path, default=REPO / DEFAULT_DATA,
                        help="a ratings dataset folder: train.ascii and test.ascii (dense "
                             "matrices, 0 = unobserved) or train.csv and test.csv (header "
                             f"user,item,rating) (default: {DEFAULT_DATA}, next to the "
                             "repository); the ratings section is skipped with a note if it "
                             "does not exist")
    parser.add_argument("--name", help="the dataset's name in tables and JSON (default: the "
                                       "folder's name)")
    parser.add_argument("--out", type=Path, default=REPO / DEFAULT_OUT,
                        help=f"where the JSON goes (default: {DEFAULT_OUT} in the "
                             "repository); the figure goes next to it, with the suffix .png")
    parser.add_argument("--seeds", type=int,
                        help="test runs per model in the ratings section (default: 5; 2 "
                             "with --quick)")
    parser.add_argument("--skip", action="append", choices=SECTIONS, default=[],
                        metavar="SECTION",
                        help=f"leave a section out (repeatable): one of {', '.join(SECTIONS)}")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default: 1; these models are small, and more "
                             "threads mostly wait on each other)")
    args = parser.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"--seeds {args.seeds}: must be at least 1")
    if args.threads < 1:
        parser.error(f"--threads {args.threads}: must be at least 1")
    return args


def main(argv: Sequence[str] | None = None, budget: Budget | None = None) -> dict[str, Any]:
    """Run the benchmark as the command line says and return what it wrote; ``budget``
    replaces the sizes that ``--quick`` chooses between (tests pass tiny ones)."""
    args = parse_args(argv)
    budget = budget or (QUICK if args.quick else FULL)
    if args.seeds is not None:
        budget = replace(budget, seeds=args.seeds)
    torch.set_num_threads(args.threads)
    quiet_lightning()
    protocol = Protocol()
    results: dict[str, Any] = {
        "device": device_name(), "cores": len(os.sched_getaffinity(0)),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "quick": args.quick,
        "budget": _jsonable(asdict(budget)), "protocol": asdict(protocol)}
    started = time.perf_counter()
    timings: dict[str, float] = {}
    with progress_bar() as progress:
        if "ratings" not in args.skip:
            section_started = time.perf_counter()
            ratings = load_ratings(args.data, args.name)
            if ratings is not None:
                outcome = ratings_section(ratings, budget, protocol, progress=progress)
                results["ratings"] = {ratings.name: outcome["metrics"]}
                results["ratings_protocol"] = {ratings.name: {
                    key: value for key, value in outcome.items() if key != "metrics"}}
                results["ratings_protocol"][ratings.name]["data"] = (
                    DEFAULT_DATA if args.data == REPO / DEFAULT_DATA else str(args.data))
            timings["ratings"] = time.perf_counter() - section_started
        for section, run in (("ultr", ultr_section), ("noise", noise_section),
                             ("throughput", throughput_section)):
            if section in args.skip:
                continue
            section_started = time.perf_counter()
            results[section] = run(budget, progress=progress)
            timings[section] = time.perf_counter() - section_started
        if "ultr" in results:
            results["ultr_targets"] = ultr_targets(results["ultr"])
    results["seconds"] = {**timings, "total": time.perf_counter() - started}
    report(results, protocol)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    console.print(f"wrote {out}")
    png = out.with_suffix(".png")
    if figure(results, png):
        console.print(f"wrote {png}")
    return results


def load_ratings(folder: Path, name: str | None) -> Ratings | None:
    if not folder.exists():
        console.print(f"[yellow]ratings: skipped, no dataset at {folder} (pass --data DIR)"
                      "[/yellow]")
        return None
    try:
        ratings = read_ratings(folder, name)
    except RatingsError as exc:
        raise SystemExit(f"error: {exc}") from None
    for file, rejected in ratings.rejected.items():
        for row in rejected[:5]:
            console.print(f"[yellow]{file} line {row.line} rejected: {row.reason}[/yellow]")
        if len(rejected) > 5:
            console.print(f"[yellow]{file}: {len(rejected) - 5} more rows rejected[/yellow]")
    return ratings


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, Iterable) and not isinstance(value, str):
        return [_jsonable(v) for v in value]
    return value


def report(results: Mapping[str, Any], protocol: Protocol) -> None:
    console.print(f"device: {results['device']}, {results['threads']} torch thread(s), "
                  f"{results['cores']} cores")
    for name in results.get("ratings", {}):
        outcome = {"metrics": results["ratings"][name], **results["ratings_protocol"][name]}
        console.print(chosen_table(name, outcome, protocol))
        console.print(ratings_table(name, outcome, protocol))
        console.print(goals_line(outcome["goals"]))
    if "ultr" in results:
        console.print(ultr_table(results["ultr"]))
        for goal, met in results["ultr_targets"].items():
            console.print(f"{goal}: {'yes' if met else 'no'}")
    if "noise" in results:
        console.print(noise_table(results["noise"]))
    if "throughput" in results:
        console.print(throughput_table(results["throughput"]))
    console.print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in results["seconds"].items()))


if __name__ == "__main__":
    main()

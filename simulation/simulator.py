"""Simulated traffic: requests, popularity-driven candidates, slates, clicks, reactions, dwell.

One call simulates a batch of impressions with NumPy, never a Python loop per impression::

    log = simulate(world, policy, PositionBasedModel(examination(10)), n=100_000, k=10)
    frames = log.frames()          # events in the log store's schema (ingest.frames)

Exposure is missing-not-at-random: each request's ``m`` candidates are drawn in proportion
to ``popularity ** candidate_exponent``, so popular items are shown (and clicked) far more
often whatever their relevance. The policy then orders the candidates and reports its
propensities. Clicked slots get a dwell time and sometimes a reaction, both tied to the true
grade; unclicked slots are sometimes hidden or skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl

from ingest.events import Event
from ingest.frames import SCHEMAS, EventFrames, events_of
from ranking.policy import BatchPolicy
from simulation.clicks import ClickModel
from simulation.world import MAX_GRADE, World

#: Reactions to a clicked item by grade 0..4: P(love), P(like), P(share), P(dislike).
CLICKED_REACTIONS = {
    "love": (0.0, 0.0, 0.02, 0.08, 0.25),
    "like": (0.01, 0.05, 0.12, 0.20, 0.30),
    "share": (0.0, 0.0, 0.01, 0.03, 0.06),
    "dislike": (0.20, 0.06, 0.01, 0.0, 0.0),
}
#: Reactions to a shown, unclicked item by grade: P(hide), P(skip).
UNCLICKED_REACTIONS = {"hide": (0.02, 0.005, 0.0, 0.0, 0.0),
                       "skip": (0.03, 0.03, 0.02, 0.01, 0.01)}
REACTION_NAMES = (*CLICKED_REACTIONS, *UNCLICKED_REACTIONS)


def sample_candidates(world: World, n: int, m: int, rng: np.random.Generator,
                      exponent: float = 1.0) -> np.ndarray:
    """(n, m) distinct items per row, drawn with probability ~ popularity ** exponent.

    Draws with replacement from the world's alias table (O(1) a draw); the rare repeats
    within a row are replaced by uniform items, which keeps rows distinct at a negligible
    change of law. When ``m`` is more than half the catalog, repeats would not be rare:
    rows are then drawn without replacement by Gumbel top-m keys (Efraimidis and Spirakis,
    "Weighted random sampling with a reservoir", IPL 2006), O(catalog) per row.
    """
    if m > world.n_items:
        raise ValueError(f"m={m} candidates exceed the catalog of {world.n_items} items")
    if 2 * m > world.n_items:
        keys = exponent * np.log(world.popularity) + rng.gumbel(size=(n, world.n_items))
        return np.argpartition(-keys, m - 1, axis=1)[:, :m] if m < world.n_items \
            else np.argsort(-keys, axis=1)
    draw = world.popularity_sampler(exponent)
    drawn = draw(rng, (n, m))
    for _ in range(100):
        ordered = np.sort(drawn, axis=1)
        rows = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
        if not len(rows):
            return drawn
        # Only rows with a repeat: mark the second and later copies, redraw them uniformly.
        sub = drawn[rows]
        order = np.argsort(sub, axis=1, kind="stable")
        ordered = np.take_along_axis(sub, order, axis=1)
        repeated_sorted = np.zeros(sub.shape, dtype=bool)
        repeated_sorted[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
        repeated = np.zeros(sub.shape, dtype=bool)
        np.put_along_axis(repeated, order, repeated_sorted, axis=1)
        sub[repeated] = rng.integers(0, world.n_items, int(repeated.sum()))
        drawn[rows] = sub
    raise RuntimeError("could not draw distinct candidates; use fewer candidates per request")


@dataclass
class SimulatedLog:
    """Arrays of one simulated batch; slot arrays have shape (n, k)."""

    policy: str
    users: np.ndarray
    ts: np.ndarray
    slates: np.ndarray
    propensity: np.ndarray
    grades: np.ndarray
    clicks: np.ndarray
    dwell: np.ndarray
    reactions: np.ndarray  # index into REACTION_NAMES, -1 for none
    first_request: int = 0
    candidates: np.ndarray | None = None  # (n, m), when simulate(keep_candidates=True)
    queries: Sequence[str] | None = None  # the query each impression answered, if any
    #: A click on slot p (0-based) comes ``(1 + p) * slot_seconds`` after its impression, a
    #: reaction one ``slot_seconds`` later: a user reading down the list.
    slot_seconds: float = 1.0

    @property
    def n(self) -> int:
        return len(self.users)

    def events(self) -> list[Event]:
        """The batch as event objects in time order (for in-process consumers and tests;
        :meth:`frames` is the fast path)."""
        return events_of(self.frames())

    def frames(self) -> EventFrames:
        """The batch as events (impression, click, reaction, dwell), built in polars."""
        n, k = self.slates.shape
        request = pl.Series(np.arange(self.first_request, self.first_request + n))
        request_id = pl.lit("sim-") + pl.col("request").cast(pl.String)
        user_id = pl.lit("u") + pl.col("user").cast(pl.String)
        flat = pl.DataFrame({
            "item": self.slates.ravel(),
            "position": np.tile(np.arange(1, k + 1, dtype=np.int32), n),
            "score": np.tile(np.arange(k, 0, -1, dtype=np.float64), n),
            "propensity": self.propensity.ravel().astype(np.float64),
        }).select(item_id=pl.lit("i") + pl.col("item").cast(pl.String),
                  position="position", score="score", propensity="propensity")
        slots = flat.select(pl.struct(pl.all()).alias("slots"))["slots"].reshape((n, k))
        base = pl.DataFrame({"request": request, "user": self.users, "ts": self.ts}).with_columns(
            query=pl.Series(self.queries, dtype=pl.String) if self.queries is not None
            else pl.lit(None, pl.String))
        impressions = base.select(
            event_id=request_id + "-imp", ts="ts", user_id=user_id, request_id=request_id,
            slots=slots.cast(pl.List(slots.dtype.inner)), policy=pl.lit(self.policy),
            experiment=pl.lit(None, pl.String), variant=pl.lit(None, pl.String),
            query="query", context=pl.lit(None, pl.String),
        ).cast(SCHEMAS["impression"])
        # The query is typed just before the impression that answers it.
        queries = base.filter(pl.col("query").is_not_null()).select(
            event_id=request_id + "-q", ts=pl.col("ts") - 0.25, user_id=user_id,
            request_id=request_id, query="query").cast(SCHEMAS["query"])
        row, position = np.nonzero(self.clicks)
        clicked = pl.DataFrame({
            "request": request.gather(row), "user": self.users[row],
            "ts": self.ts[row] + (1.0 + position) * self.slot_seconds,
            "item": self.slates[row, position],
            "position": (position + 1).astype(np.int32), "dwell": self.dwell[row, position]})
        common = dict(request_id=request_id, user_id=user_id,
                      item_id=pl.lit("i") + pl.col("item").cast(pl.String))
        clicks = clicked.select(event_id=request_id + "-c" + pl.col("position").cast(pl.String),
                                ts="ts", position="position", **common)
        dwells = clicked.select(event_id=request_id + "-d" + pl.col("position").cast(pl.String),
                                ts=pl.col("ts") + pl.col("dwell"), seconds="dwell", **common)
        row, position = np.nonzero(self.reactions >= 0)
        reacted = pl.DataFrame({
            "request": request.gather(row), "user": self.users[row],
            "ts": self.ts[row] + (2.0 + position) * self.slot_seconds,
            "item": self.slates[row, position],
            "reaction": np.asarray(REACTION_NAMES)[self.reactions[row, position]]})
        reactions = reacted.select(
            event_id=request_id + "-r" + pl.col("item").cast(pl.String), ts="ts",
            reaction="reaction", **common)
        return {
            "impression": impressions,
            "click": clicks.select(list(SCHEMAS["click"])).cast(SCHEMAS["click"]),
            "dwell": dwells.select(list(SCHEMAS["dwell"])).cast(SCHEMAS["dwell"]),
            "reaction": reactions.select(list(SCHEMAS["reaction"])).cast(SCHEMAS["reaction"]),
            **({"query": queries} if self.queries is not None else {}),
        }


#: Cumulative reaction probabilities, [clicked][grade] -> bounds over the kinds.
_BOUNDS = np.stack([
    # Fewer kinds when unclicked: repeating the last bound gives the missing kinds
    # probability 0 and keeps the last column the total.
    np.pad(np.cumsum(np.asarray(list(UNCLICKED_REACTIONS.values())).T, axis=1),
           ((0, 0), (0, len(CLICKED_REACTIONS) - len(UNCLICKED_REACTIONS))), mode="edge"),
    np.cumsum(np.asarray(list(CLICKED_REACTIONS.values())).T, axis=1),
]).astype(np.float32)
_OFFSET = np.array([len(CLICKED_REACTIONS), 0], dtype=np.int8)


def _reactions(grades: np.ndarray, clicks: np.ndarray, rng: np.random.Generator
               ) -> np.ndarray:
    """One reaction at most per slot, drawn from the table for clicked or unclicked slots.
    Most slots get none: the kind is looked up only where the draw falls under the total."""
    clicked = clicks.astype(np.int8)
    draw = rng.random(grades.shape, dtype=np.float32)
    reacts = draw < _BOUNDS[clicked, grades, -1]
    reactions = np.full(grades.shape, -1, dtype=np.int8)
    c, g = clicked[reacts], grades[reacts]
    kind = (draw[reacts][:, None] >= _BOUNDS[c, g]).sum(axis=1, dtype=np.int8)
    reactions[reacts] = kind + _OFFSET[c]
    return reactions


def respond(world: World, click_model: ClickModel, users: np.ndarray, grades: np.ndarray,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What users do with slates of these true grades: clicks, dwell seconds on clicked
    slots (log-normal, longer for better items) and reactions."""
    clicks = click_model.sample(grades, rng, world.activity_of(users))
    dwell = np.zeros(grades.shape, dtype=np.float32)
    mean = 5.0 + 40.0 * grades[clicks] / MAX_GRADE
    dwell[clicks] = rng.lognormal(np.log(mean), 0.5)
    return clicks, dwell, _reactions(grades, clicks, rng)


def simulate(
    world: World,
    policy: BatchPolicy,
    click_model: ClickModel,
    n: int,
    k: int = 10,
    *,
    candidates: int | None = None,
    candidate_exponent: float = 1.0,
    seed: int = 0,
    first_request: int = 0,
    start_ts: float = 1_767_225_600.0,
    seconds_between: float = 0.5,
    users: np.ndarray | None = None,
    chunk: int = 20_000,
    keep_candidates: bool = False,
    workers: int = 1,
) -> SimulatedLog:
    """Simulate ``n`` impressions of ``k`` slots each (see the module doc).

    Work is done in chunks of ``chunk`` impressions, so the intermediate arrays stay in
    cache, each chunk with its own random stream: a run is reproducible for a given
    ``seed`` and ``chunk`` whatever ``workers`` is. With ``workers`` > 1 chunks run on that
    many threads (NumPy releases the GIL in the heavy steps); the policy must then be safe
    to call from several threads, as every policy in :mod:`simulation.policies` is except
    :class:`~simulation.policies.PerRequestPolicy`, which refuses.
    """
    if n < 0 or chunk < 1 or workers < 1:
        raise ValueError(f"n={n}, chunk={chunk}, workers={workers}: need n >= 0 and "
                         "chunk, workers >= 1")
    if workers > 1 and not getattr(policy, "thread_safe", True):
        raise ValueError(f"workers={workers}: policy {policy.name!r} must be called from one "
                         "thread; use workers=1")
    rng = np.random.default_rng([seed, first_request])
    m = candidates or 2 * k
    if users is None:
        users = rng.integers(0, world.n_users, n)
    slates = np.empty((n, k), dtype=np.int64)
    propensity = np.empty((n, k))
    grades = np.empty((n, k), dtype=np.int8)
    clicks = np.empty((n, k), dtype=bool)
    dwell = np.empty((n, k), dtype=np.float32)
    reactions = np.empty((n, k), dtype=np.int8)
    pools = np.empty((n, m), dtype=np.int64) if keep_candidates else None

    def run(start: int) -> None:
        part = slice(start, min(start + chunk, n))
        part_rng = np.random.default_rng([seed, first_request, start])
        part_users = users[part]
        pool = sample_candidates(world, len(part_users), m, part_rng, candidate_exponent)
        slates[part], propensity[part] = policy.rank_batch(part_users, pool, k, part_rng)
        grades[part] = world.relevance(part_users[:, None], slates[part])
        clicks[part], dwell[part], reactions[part] = respond(
            world, click_model, part_users, grades[part], part_rng)
        if pools is not None:
            pools[part] = pool

    starts = range(0, n, chunk)
    if workers == 1 or len(starts) == 1:
        for start in starts:
            run(start)
    else:
        with ThreadPoolExecutor(workers) as pool_of_threads:
            list(pool_of_threads.map(run, starts))  # list(): re-raise a worker's error
    ts = start_ts + seconds_between * np.arange(first_request, first_request + n)
    return SimulatedLog(policy=policy.name, users=users, ts=ts, slates=slates,
                        propensity=propensity, grades=grades, clicks=clicks, dwell=dwell,
                        reactions=reactions, first_request=first_request, candidates=pools)

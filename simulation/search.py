"""Search sessions: users with an intent type noisy queries, look at results, reformulate or
give up.

Each session has an **intent**: a target item (the query names all its attributes) or an
attribute set (the category and some of brand, colour, material). The **clean query** is
made of those words in title order; what the user types is the clean query passed through
:class:`simulation.queries.QueryNoise`, and the record keeps both and the edits between them.

The search engine retrieves by exact word match on the catalog's fields (a typo, synonym,
truncation or abbreviation matches nothing), breaks ties by popularity, and hands the top
``m`` to the policy under test, with the query in its context. The **search relevance** of an
item to an intent is graded 0..4:

- 0: another category;
- 1..3: the right category, plus ``1 + floor(2 * matched / asked)`` of the other attributes
  asked for (3 when all match, or when only the category was asked);
- 4: the target item itself (item intents).

The user scans the slate with the click model. A click on an item of grade >=
``found_from`` ends the session as found. Otherwise the user gives up with probability
``abandon``, or reformulates: the same clean query typed again at noise level times
``noise_decay``, up to ``max_reformulations`` times, and abandons after that. Each step is
vectorized over all sessions still going; only the string noise loops per query.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from ranking.policy import BatchPolicy
from simulation.clicks import ClickModel
from simulation.queries import Edit, QueryNoise
from simulation.simulator import SimulatedLog, respond
from simulation.world import BRANDS, CATEGORIES, COLOURS, MATERIALS, World

#: The fields of a title, in title order, and the words of each.
FIELDS = ("brand", "colour", "material", "category")
_WORDS = (BRANDS, COLOURS, MATERIALS, CATEGORIES)
_LOOKUP = {word: (f, value) for f, words in enumerate(_WORDS) for value, word in enumerate(words)}
_CATEGORY = FIELDS.index("category")
_EDIT = pl.Struct({"process": pl.String, "word": pl.Int32, "before": pl.String,
                   "after": pl.String})


def _field_values(world: World, items: np.ndarray) -> np.ndarray:
    """(..., 4) field values of items, in FIELDS order."""
    return np.stack([world.brand[items], world.colour[items], world.material[items],
                     world.category[items]], axis=-1)


def parse_query(query: str) -> np.ndarray:
    """The catalog value each field asks for (-1 where the query names none); words the
    catalog does not know are ignored, as an exact-match engine would."""
    fields = np.full(len(FIELDS), -1, dtype=np.int16)
    for word in query.split():
        hit = _LOOKUP.get(word)
        if hit is not None:
            fields[hit[0]] = hit[1]
    return fields


def lexical_retrieve(world: World, asked: np.ndarray, m: int, chunk: int = 256) -> np.ndarray:
    """(n, m) items per parsed query (``asked``, shape (n, 4)), best first: most fields
    matched, then most popular. Costs O(n x catalog) comparisons, in chunks of queries."""
    if m > world.n_items:
        raise ValueError(f"m={m} candidates exceed the catalog of {world.n_items} items")
    # The world's own per-field arrays, contiguous; a field the query does not name is -1
    # and equals no catalog value, so it adds nothing without a mask.
    catalog = (world.brand, world.colour, world.material, world.category)
    tiebreak = (0.5 * world.popularity / world.popularity.max()).astype(np.float32)
    out = np.empty((len(asked), m), dtype=np.int64)
    for start in range(0, len(asked), chunk):
        block = asked[start:start + chunk]
        score = np.broadcast_to(tiebreak, (len(block), world.n_items)).copy()
        for f, values in enumerate(catalog):
            score += values[None, :] == block[:, f][:, None]
        top = np.argpartition(-score, m - 1, axis=1)[:, :m]
        order = np.argsort(-np.take_along_axis(score, top, axis=1), axis=1, kind="stable")
        out[start:start + chunk] = np.take_along_axis(top, order, axis=1)
    return out


@dataclass(frozen=True)
class Intents:
    """What each session looks for: a target item and which of its fields are asked for."""

    target: np.ndarray  # (n,) item
    asked: np.ndarray  # (n, 4) bool, FIELDS order; the category is always asked
    is_item: np.ndarray  # (n,) bool: the target item itself is wanted

    def clean_queries(self, world: World) -> list[str]:
        values = _field_values(world, self.target)
        return [" ".join(_WORDS[f][values[row, f]] for f in range(len(FIELDS))
                         if self.asked[row, f]) for row in range(len(self.target))]

    def relevance(self, world: World, items: np.ndarray) -> np.ndarray:
        """Search relevance 0..4 of items (n, k) to each intent (see the module doc)."""
        want = _field_values(world, self.target)[:, None, :]
        have = _field_values(world, items)
        same = have == want
        other = self.asked.copy()
        other[:, _CATEGORY] = False
        asked = other.sum(axis=1)[:, None]
        matched = (same & other[:, None, :]).sum(axis=2)
        grade = np.where(asked > 0, 1 + (2 * matched) // np.maximum(asked, 1), 3)
        grade = np.where(same[..., _CATEGORY], grade, 0)
        grade = np.where(self.is_item[:, None] & (items == self.target[:, None]), 4, grade)
        return grade.astype(np.int8)


def sample_intents(world: World, n: int, rng: np.random.Generator, item_share: float = 0.5,
                   ask_rate: float = 0.5) -> Intents:
    """Targets drawn by popularity; item intents ask every field, attribute intents the
    category and each other field with probability ``ask_rate``."""
    target = world.popularity_sampler()(rng, (n,))
    is_item = rng.random(n) < item_share
    asked = rng.random((n, len(FIELDS))) < ask_rate
    asked[:, _CATEGORY] = True
    asked[is_item] = True
    return Intents(target, asked, is_item)


@dataclass
class SearchLog:
    """The impressions of every search step (``log``, with their queries) and one record
    per step: ``session, step, request_id, user, target, intent, clean, noisy, edits,
    level, found, outcome`` (outcome of the session, on its last step: found, abandoned;
    ``reformulated`` on the others)."""

    log: SimulatedLog
    steps: pl.DataFrame


def simulate_search(
    world: World,
    policy: BatchPolicy,
    click_model: ClickModel,
    n_sessions: int,
    k: int = 10,
    *,
    noise: QueryNoise | None = None,
    level: float = 1.0,
    noise_decay: float = 0.4,
    max_reformulations: int = 3,
    abandon: float = 0.2,
    found_from: int = 3,
    candidates: int | None = None,
    item_share: float = 0.5,
    users: np.ndarray | None = None,
    seed: int = 0,
    start_ts: float = 1_767_225_600.0,
    seconds_between: float = 5.0,
    seconds_per_step: float = 20.0,
    first_request: int = 0,
) -> SearchLog:
    """``n_sessions`` search sessions (see the module doc). Session ``s`` starts at
    ``start_ts + s * seconds_between``; its steps follow ``seconds_per_step`` apart."""
    if max_reformulations < 0:
        raise ValueError(f"max_reformulations={max_reformulations} must be >= 0")
    for name, value in (("level", level), ("noise_decay", noise_decay), ("abandon", abandon)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name}={value} must be in [0, 1]")
    noise = noise or QueryNoise()
    rng = np.random.default_rng([seed, 11])
    m = candidates or 2 * k
    if users is None:
        users = rng.integers(0, world.n_users, n_sessions)
    intents = sample_intents(world, n_sessions, rng, item_share)
    clean = intents.clean_queries(world)
    active = np.arange(n_sessions)
    arrays, records = [], []
    for step in range(max_reformulations + 1):
        step_level = level * noise_decay**step
        typed = [noise.apply(clean[s], rng, step_level) for s in active]
        asked = np.stack([parse_query(q.noisy) for q in typed])
        pool = lexical_retrieve(world, asked, m)
        queries = [q.noisy for q in typed]
        slates, propensity = policy.rank_batch(users[active], pool, k, rng, {"query": queries})
        here = Intents(intents.target[active], intents.asked[active], intents.is_item[active])
        grades = here.relevance(world, slates)
        clicks, dwell, reactions = respond(world, click_model, users[active], grades, rng)
        found = (clicks & (grades >= found_from)).any(axis=1)
        last = step == max_reformulations
        gives_up = ~found & (last | (rng.random(len(active)) < abandon))
        outcome = np.where(found, "found", np.where(gives_up, "abandoned", "reformulated"))
        arrays.append((users[active], start_ts + seconds_between * active
                       + seconds_per_step * step, slates, propensity, grades, clicks, dwell,
                       reactions, queries))
        records.append(pl.DataFrame({
            "session": active, "step": np.full(len(active), step),
            "user": users[active], "target": intents.target[active],
            "intent": np.where(intents.is_item[active], "item", "attributes"),
            "clean": [clean[s] for s in active], "noisy": queries,
            "edits": pl.Series([[_edit_row(e) for e in q.edits] for q in typed],
                               dtype=pl.List(_EDIT)),
            "level": np.full(len(active), step_level), "found": found, "outcome": outcome,
        }))
        active = active[outcome == "reformulated"]
        if not len(active):
            break
    columns = list(zip(*arrays, strict=True))
    log = SimulatedLog(
        policy=policy.name, users=np.concatenate(columns[0]), ts=np.concatenate(columns[1]),
        slates=np.concatenate(columns[2]), propensity=np.concatenate(columns[3]),
        grades=np.concatenate(columns[4]), clicks=np.concatenate(columns[5]),
        dwell=np.concatenate(columns[6]), reactions=np.concatenate(columns[7]),
        first_request=first_request, queries=[q for part in columns[8] for q in part])
    steps = pl.concat(records).with_columns(
        request_id=pl.lit("sim-")
        + (pl.int_range(pl.len()) + first_request).cast(pl.String))
    return SearchLog(log, steps.select("session", "step", "request_id", pl.exclude(
        "session", "step", "request_id")))


def _edit_row(edit: Edit) -> dict[str, object]:
    return {"process": edit.process, "word": edit.word, "before": edit.before,
            "after": edit.after}

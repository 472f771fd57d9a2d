"""A seeded world where the truth is known: items, users, and how relevant each item is to each
user.

Items have a category, a brand and two attributes (colour, material), a title composed from
those words, a popularity (Zipf), and a latent vector. Users have latent preferences
(low-rank), a taste for popular items, and an activity level (how readily they click; all
alike unless ``activity_spread`` > 0). The true relevance of a user-item pair is a
grade 0..4 obtained by cutting the affinity ``<u, v> + popularity_weight * log(popularity)``
at fixed quantiles of its distribution, so grades have the same shares in every world
(``GRADE_SHARES``). Everything is a pure function of the seed and vectorized (only the
popularity sampler's alias table is built in a loop), and relevance is computed on demand for any
(user, item) arrays, never stored as a users x items matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

MAX_GRADE = 4
#: Share of user-item pairs at grades 0, 1, 2, 3, 4.
GRADE_SHARES = (0.55, 0.25, 0.12, 0.06, 0.02)

CATEGORIES = ("jacket", "coat", "sneaker", "boot", "shirt", "sweater", "jeans", "dress",
              "skirt", "scarf", "hat", "bag", "belt", "watch", "sandal", "hoodie", "parka",
              "blazer", "vest", "glove")
BRANDS = ("acme", "northwind", "umbra", "solace", "kestrel", "marlow", "tidewater", "fjell",
          "oriel", "quill", "brava", "lumen", "corvid", "halden", "ysolde", "pakka")
COLOURS = ("black", "white", "red", "navy", "olive", "grey", "beige", "brown", "green",
           "blue", "pink", "yellow")
MATERIALS = ("wool", "cotton", "leather", "denim", "linen", "suede", "fleece", "nylon",
             "cashmere", "canvas")


@dataclass(frozen=True)
class World:
    """A catalog, its users, and the true relevance between them (see the module doc)."""

    n_items: int = 10_000
    n_users: int = 5_000
    rank: int = 16
    popularity_exponent: float = 1.1
    popularity_weight: float = 0.3
    #: Spread (log-normal sigma) of how readily users click: 0 makes every user alike.
    activity_spread: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_items", "n_users", "rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")

    def _rng(self, stream: int) -> np.random.Generator:
        # One independent stream per part, so adding a part never changes another.
        return np.random.default_rng([self.seed, stream])

    @cached_property
    def category(self) -> np.ndarray:
        return self._rng(1).integers(0, len(CATEGORIES), self.n_items, dtype=np.int16)

    @cached_property
    def brand(self) -> np.ndarray:
        return self._rng(2).integers(0, len(BRANDS), self.n_items, dtype=np.int16)

    @cached_property
    def colour(self) -> np.ndarray:
        return self._rng(3).integers(0, len(COLOURS), self.n_items, dtype=np.int16)

    @cached_property
    def material(self) -> np.ndarray:
        return self._rng(4).integers(0, len(MATERIALS), self.n_items, dtype=np.int16)

    @cached_property
    def popularity(self) -> np.ndarray:
        """Probabilities summing to 1, Zipf over a random order of the items."""
        ranks = self._rng(5).permutation(self.n_items) + 1
        weights = ranks.astype(np.float64) ** -self.popularity_exponent
        return weights / weights.sum()

    @cached_property
    def item_vectors(self) -> np.ndarray:
        """Latent item vectors: the category's direction plus the item's own noise."""
        rng = self._rng(6)
        centres = rng.normal(size=(len(CATEGORIES), self.rank)).astype(np.float32)
        own = rng.normal(scale=0.7, size=(self.n_items, self.rank)).astype(np.float32)
        vectors = centres[self.category] + own
        return vectors / np.sqrt(self.rank)

    @cached_property
    def user_activity(self) -> np.ndarray:
        """Per-user multiplier of P(click | examined), log-normal with mean 1."""
        sigma = self.activity_spread
        return self._rng(9).lognormal(-sigma**2 / 2, sigma, self.n_users).astype(np.float32)

    def activity_of(self, users: np.ndarray) -> np.ndarray | None:
        """The activity of these users, or None when all users are alike (the click models'
        default, which skips the multiplication)."""
        return self.user_activity[users] if self.activity_spread else None

    @cached_property
    def user_vectors(self) -> np.ndarray:
        return self._rng(7).normal(size=(self.n_users, self.rank)).astype(np.float32) \
            / np.sqrt(self.rank)

    @cached_property
    def popularity_bonus(self) -> np.ndarray:
        return (self.popularity_weight * np.log(self.popularity * self.n_items)).astype(
            np.float32)

    def affinity(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Real-valued affinity of each (user, item) pair; arrays broadcast."""
        users, items = np.asarray(users), np.asarray(items)
        if users.ndim == 2 and users.shape[1] == 1 and items.ndim == 2:
            # One user per row of slots, the simulator's case: an explicit einsum over blocks
            # of rows that stay in cache (one gather of all item vectors would be n*k*d
            # floats of fresh memory); benchmarks/simulation.py measures the whole step.
            # np.take rather than fancy indexing for the row gathers: faster in an ad-hoc
            # timing; benchmarks/simulation.py times the whole step.
            dot = np.empty(items.shape, dtype=np.float32)
            for start in range(0, len(items), 4096):
                block = slice(start, start + 4096)
                dot[block] = np.einsum("nd,nkd->nk",
                                       np.take(self.user_vectors, users[block, 0], axis=0),
                                       np.take(self.item_vectors, items[block], axis=0))
        else:
            dot = (self.user_vectors[users] * self.item_vectors[items]).sum(axis=-1)
        return dot + self.popularity_bonus[items]

    def popularity_sampler(self, exponent: float = 1.0
                           ) -> Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]:
        """A sampler of items with probability ~ popularity ** exponent (Walker's alias
        method: Walker, "An efficient method for generating discrete random variables with
        general distributions", ACM TOMS 1977; O(1) a draw, vectorized)."""
        key = ("alias", exponent)
        if key not in self.__dict__:
            weights = self.popularity ** exponent
            self.__dict__[key] = _alias_table(weights / weights.sum())
        accept, alias = self.__dict__[key]
        n_items = self.n_items

        def draw(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
            bucket = rng.integers(0, n_items, shape)
            keep = rng.random(shape, dtype=np.float32) < accept[bucket]
            return np.where(keep, bucket, alias[bucket])

        return draw

    @cached_property
    def grade_cuts(self) -> np.ndarray:
        """Affinity thresholds between grades, from a fixed sample of pairs."""
        rng = self._rng(8)
        sample = self.affinity(rng.integers(0, self.n_users, 200_000),
                               rng.integers(0, self.n_items, 200_000))
        return np.quantile(sample, np.cumsum(GRADE_SHARES)[:-1])

    def relevance(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """The true grade 0..4 of each (user, item) pair; arrays broadcast."""
        return np.searchsorted(self.grade_cuts, self.affinity(users, items)).astype(np.int8)

    def titles(self, items: np.ndarray) -> list[str]:
        """Titles such as ``"acme navy wool coat"``: brand, colour, material, category."""
        items = np.asarray(items)
        return [f"{BRANDS[b]} {COLOURS[c]} {MATERIALS[m]} {CATEGORIES[k]}"
                for b, c, m, k in zip(self.brand[items], self.colour[items],
                                      self.material[items], self.category[items],
                                      strict=True)]

    def ideal_slate(self, user: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The oracle: the k items of highest affinity for ``user`` and their grades."""
        scores = self.affinity(np.full(self.n_items, user), np.arange(self.n_items))
        top = np.argpartition(-scores, min(k, self.n_items - 1))[:k]
        top = top[np.argsort(-scores[top])]
        return top, self.relevance(np.full(k, user), top)


def _alias_table(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(accept, alias) for Walker's method. Building it loops once over the items (setup
    only, like any alias table); drawing is vectorized."""
    n = len(probabilities)
    scaled = probabilities * n
    accept = np.ones(n, dtype=np.float32)
    alias = np.arange(n)
    small = [i for i in range(n) if scaled[i] < 1.0]
    large = [i for i in range(n) if scaled[i] >= 1.0]
    while small and large:
        low, high = small.pop(), large.pop()
        accept[low], alias[low] = scaled[low], high
        scaled[high] -= 1.0 - scaled[low]
        (small if scaled[high] < 1.0 else large).append(high)
    return accept, alias

"""Dense retrieval over a simulated catalog's titles, beside the simulator's exact-word engine.

The helpers that the retrieval checks share: an index of title vectors
(:func:`title_index`, exact ``Flat`` at catalog sizes up to :data:`ranking.index.FLAT_MAX`),
item rows from it (:func:`dense_retrieve`), the exact-word engine of :mod:`simulation.search`
on raw query strings (:func:`exact_word_retrieve`), and success@k against search intents
(:func:`success_at_k`: at least one item of search relevance >= ``found_from`` in the top k,
the grade at which a click ends a session as found). Encoders are passed in (anything with
``name`` and ``encode(texts)``, such as :class:`models.embeddings.TextEncoder`), so this module
needs no model package.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ranking.index import VectorIndex, build
from simulation.search import Intents, lexical_retrieve, parse_query
from simulation.world import World


class Encoder(Protocol):
    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n, d) float32 L2-normalized rows."""
        ...


def title_vectors(world: World, encoder: Encoder) -> np.ndarray:
    """(n_items, d) vectors of every item's title, item ``i`` in row ``i``."""
    return encoder.encode(world.titles(np.arange(world.n_items)))


def title_index(vectors: np.ndarray, *, model: str, seed: int = 0) -> VectorIndex:
    """A self-tuned :class:`~ranking.index.VectorIndex` of item vectors, id ``str(i)`` for
    row ``i``."""
    return build([str(i) for i in range(len(vectors))], vectors, model=model, seed=seed)


def dense_retrieve(index: VectorIndex, query_vectors: np.ndarray, k: int) -> np.ndarray:
    """(n, k) item rows, best first, from an index built by :func:`title_index`."""
    ids, _ = index.search(query_vectors, k)
    short = [row for row, got in enumerate(ids) if len(got) < k]
    if short:
        raise ValueError(f"k={k} must not exceed what the index returns (row {short[0]} got "
                         f"{len(ids[short[0]])})")
    return np.array(ids, dtype=np.int64).reshape(len(ids), k)


def exact_word_retrieve(world: World, queries: Sequence[str], k: int) -> np.ndarray:
    """(n, k) items from the simulator's exact-word engine (:func:`lexical_retrieve` on
    :func:`parse_query`): what :func:`simulation.search.simulate_search` retrieves."""
    asked = np.stack([parse_query(q) for q in queries]) if len(queries) else \
        np.zeros((0, 4), dtype=np.int16)
    return lexical_retrieve(world, asked, k)


def success_at_k(world: World, intents: Intents, slates: np.ndarray, k: int = 10,
                 found_from: int = 3) -> np.ndarray:
    """(n,) bool: the top ``k`` of each slate holds an item of search relevance >=
    ``found_from`` to its intent."""
    if slates.ndim != 2 or len(slates) != len(intents.target):
        raise ValueError(f"slates.shape={slates.shape} must be (n, k) with n="
                         f"{len(intents.target)} (one row per intent)")
    return (intents.relevance(world, slates[:, :k]) >= found_from).any(axis=1)

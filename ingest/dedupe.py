"""Remembering event ids already seen, to drop duplicates.

:class:`DedupeWindow` is the consumer's: the last N ids, one batch of Python strings at a
time. :class:`IdIndex` is the replay's: every id, a column at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import polars as pl


class DedupeWindow:
    """Remembers the last ``capacity`` distinct ids; older ones are forgotten first.

    A set answers membership; a list keeps the distinct ids in arrival order, of which
    ``_order[_head:]`` are the live ones, so forgetting the oldest is one C-level
    ``difference_update`` over a slice and the list is compacted once half of it is dead.
    (Evicting through a dict's first key is O(n) once many have been deleted: CPython scans
    the holes each time; ``benchmarks/ingest.py`` times that way next to this one.)
    Ids seen again are not refreshed: the window bounds memory, not recency.
    """

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity={capacity} must be > 0")
        self.capacity = capacity
        self._seen: set[str] = set()
        self._order: list[str] = []
        self._head = 0

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._seen

    def add(self, event_id: str) -> bool:
        """Record ``event_id``; True when it is new, False when it is a duplicate."""
        return self.add_many((event_id,))[0]

    def add_many(self, event_ids: Sequence[str]) -> list[bool]:
        """Record a batch in order; for each id, True when it is new (not in the window and
        not earlier in the batch), False when it is a duplicate."""
        seen = self._seen
        batch = set(event_ids)
        if len(batch) == len(event_ids) and seen.isdisjoint(batch):
            # The common case, all new: no per-id Python work.
            seen |= batch
            self._order.extend(event_ids)
            self._evict()
            return [True] * len(event_ids)
        flags: list[bool] = []
        for event_id in event_ids:
            new = event_id not in seen
            if new:
                seen.add(event_id)
                self._order.append(event_id)
            flags.append(new)
        self._evict()
        return flags

    def seed(self, event_ids: Iterable[str]) -> None:
        """Pre-load ids already applied (e.g. from a sink's recent output after a restart)."""
        self.add_many(list(event_ids))

    def _evict(self) -> None:
        excess = len(self._seen) - self.capacity
        if excess <= 0:
            return
        start = self._head
        self._seen.difference_update(self._order[start:start + excess])
        self._head = start + excess
        if self._head * 2 > len(self._order):
            del self._order[: self._head]
            self._head = 0


class IdIndex:
    """Every distinct id added so far, for deduplicating whole columns (a replay into a
    log store that may already hold some of them).

    The ids are kept as a polars column and, for lookups, as their 64-bit hashes in a few
    sorted numpy runs, as in a log-structured merge tree (O'Neil et al., "The
    log-structured merge-tree", Acta Informatica 33, 1996): a batch is looked up with one
    ``searchsorted`` per run and its new hashes become a run of their own; a run is merged
    into the one before it once it is half that size or more, so there are about
    log2(stored / batch) runs and each hash is copied that many times in all. (Inserting
    each batch into one sorted array copies everything stored every time: quadratic in the
    log's length.) Hash matches are confirmed against the ids themselves, so two ids that
    share a hash are never taken for one.
    """

    def __init__(self, ids: pl.Series | None = None) -> None:
        self._runs: list[np.ndarray] = []
        self._ids = pl.Series("id", [], pl.String)
        self._id_hashes = pl.Series("hash", [], pl.UInt64)
        if ids is not None:
            self.add_new(ids)

    def __len__(self) -> int:
        return sum(map(len, self._runs))

    @property
    def runs(self) -> int:
        """How many sorted runs the hashes are kept in."""
        return len(self._runs)

    def add_new(self, ids: pl.Series) -> pl.Series:
        """Add ``ids``; returns the mask of those that are new: not stored already and
        not earlier in ``ids``."""
        ids = ids.cast(pl.String).rename("id")
        hashes = self._hash(ids)
        # Looked up in sorted order: numpy's binary search then starts each search where
        # the last one ended, instead of at random places in a large array.
        order = np.argsort(hashes)
        ordered = hashes[order]
        matched = np.zeros(len(hashes), bool)
        for run in self._runs:
            # Past a run's last hash, its last one stands in: it cannot be equal.
            where = np.minimum(np.searchsorted(run, ordered), len(run) - 1)
            matched[order[run[where] == ordered]] = True
        if matched.any():
            shared = self._id_hashes.is_in(pl.Series(hashes[matched]).implode())
            candidates = self._ids.filter(shared).implode()
            matched[matched] = ids.filter(pl.Series(matched)).is_in(candidates).to_numpy()
        if len(ordered) > 1 and (ordered[1:] == ordered[:-1]).any():
            new = ids.is_first_distinct().to_numpy() & ~matched  # repeats, or a collision
        else:
            new = ~matched
        self._add_run(ordered[new[order]])  # the new hashes, still in sorted order
        mask = pl.Series(new)
        self._ids.append(ids.filter(mask))
        self._id_hashes.append(pl.Series("hash", hashes).filter(mask))
        if self._ids.n_chunks() > _MAX_CHUNKS:
            self._ids, self._id_hashes = self._ids.rechunk(), self._id_hashes.rechunk()
        return mask

    def _add_run(self, run: np.ndarray) -> None:
        if not len(run):
            return
        self._runs.append(run)
        while len(self._runs) > 1 and 2 * len(self._runs[-1]) >= len(self._runs[-2]):
            newer = self._runs.pop()
            merged = np.concatenate([self._runs.pop(), newer])
            merged.sort(kind="stable")  # two sorted runs: one linear merge
            self._runs.append(merged)

    @staticmethod
    def _hash(ids: pl.Series) -> np.ndarray:
        return ids.hash(seed=_HASH_SEED).to_numpy()


_HASH_SEED = 0x636C69636B6C6F6F  # any fixed seed: the index lives in one process
#: Appended batches are compacted into one buffer when there are more than this many.
_MAX_CHUNKS = 64

"""Remembering event ids already seen, to drop duplicates: the consumer remembers the last
N ids, a replay into a log store every id the store holds."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class DedupeWindow:
    """Remembers the last ``capacity`` distinct ids (``None``: all of them); older ones are
    forgotten first.

    A set answers membership; a list keeps the distinct ids in arrival order, of which
    ``_order[_head:]`` are the live ones, so forgetting the oldest is one C-level
    ``difference_update`` over a slice and the list is compacted once half of it is dead.
    (Evicting through a dict's first key is O(n) once many have been deleted: CPython scans
    the holes each time; ``benchmarks/ingest.py`` times that way next to this one.)
    Ids seen again are not refreshed: the window bounds memory, not recency.
    """

    def __init__(self, capacity: int | None) -> None:
        if capacity is not None and capacity <= 0:
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
            flags = [True] * len(event_ids)
        else:
            flags = []
            for event_id in event_ids:
                new = event_id not in seen
                if new:
                    seen.add(event_id)
                    self._order.append(event_id)
                flags.append(new)
        if self.capacity is None:
            self._order.clear()  # nothing is ever forgotten: no need for the order
        elif (excess := len(seen) - self.capacity) > 0:
            seen.difference_update(self._order[self._head:self._head + excess])
            self._head += excess
            if self._head * 2 > len(self._order):
                del self._order[: self._head]
                self._head = 0
        return flags

    def seed(self, event_ids: Iterable[str]) -> None:
        """Pre-load ids already applied (e.g. from a sink's recent output after a restart)."""
        self.add_many(list(event_ids))

"""A bounded window of recently seen event ids."""

from __future__ import annotations

from collections.abc import Iterable


class DedupeWindow:
    """Remembers the last ``capacity`` distinct ids; older ones are forgotten first.

    A plain dict keeps insertion order, so it is an ordered set with O(1) eviction of the
    oldest id. Ids seen again are not refreshed: the window bounds memory, not recency.
    """

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity={capacity} must be > 0")
        self.capacity = capacity
        self._seen: dict[str, None] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._seen

    def add(self, event_id: str) -> bool:
        """Record ``event_id``; True when it is new, False when it is a duplicate."""
        seen = self._seen
        if event_id in seen:
            return False
        seen[event_id] = None
        if len(seen) > self.capacity:
            del seen[next(iter(seen))]
        return True

    def seed(self, event_ids: Iterable[str]) -> None:
        """Pre-load ids already applied (e.g. from a sink's recent output after a restart)."""
        for event_id in event_ids:
            self.add(event_id)

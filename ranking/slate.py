"""The per-request policy contract: ``rank(context, candidates, k) -> Slate``.

A policy gets what is known about the request (``context``: ``user_id``, ``query`` where
there is one, features), the candidate item ids, and the number of slots ``k``; it returns
the items it shows, top first, with the propensity of each at its position (DESIGN.md,
Policies: 1 for a deterministic policy, the real probability for an exploring one). The
simulator drives such a policy in-process or over HTTP, and serving exposes one. The same
contract for many requests at once is :mod:`ranking.policy`; over HTTP, :mod:`ranking.api`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class SlateError(ValueError):
    """A slate that breaks the contract; the message names the field and the value."""


@dataclass(frozen=True)
class Slate:
    items: list[str]
    propensities: list[float]
    scores: list[float] | None = None

    def check(self, candidates: Sequence[str], k: int) -> Slate:
        """This slate, if it fits the request; a :class:`SlateError` saying why otherwise."""
        expected = min(k, len(candidates))
        if len(self.items) != expected:
            raise SlateError(f"items has {len(self.items)} entries; expected {expected} "
                             f"(k={k}, {len(candidates)} candidates)")
        if len(self.propensities) != len(self.items):
            raise SlateError(f"propensities has {len(self.propensities)} entries for "
                             f"{len(self.items)} items")
        if self.scores is not None and len(self.scores) != len(self.items):
            raise SlateError(f"scores has {len(self.scores)} entries for "
                             f"{len(self.items)} items")
        allowed = set(candidates)
        seen: set[str] = set()
        for position, item in enumerate(self.items):
            if item not in allowed:
                raise SlateError(f"items[{position}]={item!r} is not one of the candidates")
            if item in seen:
                raise SlateError(f"items[{position}]={item!r} is shown twice")
            seen.add(item)
        for position, p in enumerate(self.propensities):
            if not 0 < p <= 1:  # also false for NaN
                raise SlateError(f"propensities[{position}]={p!r} must be in (0, 1]")
        return self


class RankingPolicy(Protocol):
    name: str

    def rank(self, context: Mapping[str, Any], candidates: Sequence[str], k: int) -> Slate:
        ...

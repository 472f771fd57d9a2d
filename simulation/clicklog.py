"""A small seeded click log under the position-based model, for the quick-start job and tests.

Each impression shows ``k`` of ``n_items`` items chosen by an epsilon-greedy logging
policy: with probability ``1 - epsilon`` the ``k`` most attractive items in order, otherwise
``k`` items drawn uniformly without replacement. The probability of an item at a position is
then exact: ``(1 - epsilon) * [item is the p-th best] + epsilon / n_items``. A slot at position ``p`` is examined with
probability ``theta_p = (1/p)^eta`` and clicked when examined with the item's attraction
(position-based model, Craswell et al., "An experimental comparison of click position-bias
models", WSDM 2008). Sampling is vectorized with NumPy; only the event objects are built
one by one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ingest.events import Click, Event, Impression, Slot


@dataclass(frozen=True)
class PositionBasedLog:
    n_items: int = 200
    n_users: int = 1000
    k: int = 5
    eta: float = 1.0
    epsilon: float = 0.3
    seed: int = 0
    start_ts: float = 1_767_225_600.0  # 2026-01-01 UTC
    seconds_between: float = 2.0

    def examination(self) -> np.ndarray:
        """theta_p for p = 1..k."""
        return (1.0 / np.arange(1, self.k + 1)) ** self.eta

    def attraction(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        return rng.beta(1.0, 6.0, size=self.n_items)

    def batches(self, n_impressions: int, batch: int = 10_000) -> Iterator[list[Event]]:
        rng = np.random.default_rng(self.seed + 1)
        attraction = self.attraction()
        theta = self.examination()
        best = np.argsort(-attraction)[: self.k]
        for start in range(0, n_impressions, batch):
            n = min(batch, n_impressions - start)
            explore = rng.random(n) < self.epsilon
            # k distinct uniform items per row: the first k of a random permutation.
            random_slates = np.argsort(rng.random((n, self.n_items)), axis=1)[:, : self.k]
            shown = np.where(explore[:, None], random_slates, best[None, :])
            propensity = self.epsilon / self.n_items + (1 - self.epsilon) * (
                shown == best[None, :])
            clicks = rng.random((n, self.k)) < theta[None, :] * attraction[shown]
            users = rng.integers(0, self.n_users, size=n)
            events: list[Event] = []
            for row in range(n):
                index = start + row
                ts = self.start_ts + index * self.seconds_between
                request_id, user_id = f"r{self.seed}-{index}", f"u{users[row]}"
                events.append(Impression(
                    event_id=f"{request_id}-imp", ts=ts, user_id=user_id,
                    request_id=request_id, policy=f"epsilon-greedy-{self.epsilon:g}",
                    slots=[Slot(f"item{shown[row, p]}", p + 1, float(self.k - p),
                                float(propensity[row, p])) for p in range(self.k)],
                ))
                for p in np.flatnonzero(clicks[row]).tolist():
                    events.append(Click(
                        event_id=f"{request_id}-click-{p + 1}", ts=ts + 1.0 + p,
                        user_id=user_id, request_id=request_id,
                        item_id=f"item{shown[row, p]}", position=p + 1))
            yield events


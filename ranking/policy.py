"""The batch policy contract: rank the candidates of many requests at once.

A :class:`BatchPolicy` is the vectorized form of :class:`ranking.slate.RankingPolicy`, for
simulation and offline evaluation, where requests come by the thousand::

    slates, propensity = policy.rank_batch(users, candidates, k, rng, context)

- ``users``: shape (n,), one user index per request;
- ``candidates``: shape (n, m), item indices, each row in the order retrieval gave them;
- ``context``: per-request values beyond the user (:data:`Context`), or None;
- the result: the shown item indices, shape (n, k), top first, and the probability that the
  policy put that item at that position given the candidates, shape (n, k).

Deterministic policies report propensity 1; exploring ones report the real probability of the
shown position (DESIGN.md, Policies: a policy never reports a propensity it did not compute).
A policy that keeps per-call state and must be called from one thread at a time says so with
a class attribute ``thread_safe = False``; without it, callers may use it from several threads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

#: Per-request values beyond the user, one sequence per key (e.g. ``{"query": [...]}``).
Context = Mapping[str, Sequence[Any]]


class BatchPolicy(Protocol):
    name: str

    def rank_batch(self, users: np.ndarray, candidates: np.ndarray, k: int,
                   rng: np.random.Generator, context: Context | None = None
                   ) -> tuple[np.ndarray, np.ndarray]: ...

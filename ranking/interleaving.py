"""Team-draft interleaving: compare two rankers on the same impressions.

Team-draft (Radlinski, Kurup and Joachims, "How does clickthrough data reflect retrieval
quality?", CIKM 2008): in each round a coin decides which ranker picks first; each ranker
adds its highest-ranked item not yet shown, and the item is credited to that ranker's team.
A user's clicks then vote: the ranker whose team got more clicks wins the impression. Since
both rankers are shown to every user, interleaving needs far less traffic than an A/B test
to detect a small difference (Chapelle et al., "Large-scale validation and analysis of
interleaved search evaluation", ACM TOIS 2012).

Vectorized over impressions; the loops run over the k positions only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


def team_draft(a: np.ndarray, b: np.ndarray, k: int, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """Interleave rankings ``a`` and ``b`` (shape (n, m), item ids, no repeats within a row).

    Returns the interleaved lists (n, k) and each slot's team (0 for ``a``, 1 for ``b``).
    Each ranking must have at least k items that the other does not crowd out: with
    m >= k that always holds.
    """
    a, b = np.asarray(a), np.asarray(b)
    n, m = a.shape
    if b.shape != a.shape or not 1 <= k <= m:
        raise ValueError(f"rankings of shapes {a.shape} and {b.shape} cannot fill k={k}")
    shown = np.full((n, k), -1, dtype=a.dtype)
    team = np.zeros((n, k), dtype=np.int8)
    pointer = np.zeros((2, n), dtype=np.int64)
    picks = np.zeros((2, n), dtype=np.int64)
    rows = np.arange(n)
    rankings = (a, b)
    a_first = rng.random(n) < 0.5
    for slot in range(k):
        # The team with fewer picks goes; on a tie (the start of a round) the coin decides.
        # Each round's coin is drawn once and used for both of its picks.
        if slot % 2 == 0:
            a_first = rng.random(n) < 0.5
        turn = np.where(picks[0] < picks[1], 0, np.where(picks[1] < picks[0], 1,
                                                         np.where(a_first, 0, 1)))
        for who in (0, 1):
            mine = rows[turn == who]
            ranking = rankings[who]
            # Skip items the other team already put on the list.
            for _ in range(m):
                candidate = ranking[mine, np.minimum(pointer[who, mine], m - 1)]
                taken = (shown[mine, :slot] == candidate[:, None]).any(axis=1)
                if not taken.any():
                    break
                pointer[who, mine[taken]] += 1
            shown[mine, slot] = ranking[mine, np.minimum(pointer[who, mine], m - 1)]
            team[mine, slot] = who
            pointer[who, mine] += 1
            picks[who, mine] += 1
    return shown, team


@dataclass(frozen=True)
class InterleavingResult:
    wins_a: int
    wins_b: int
    ties: int
    p_value: float

    @property
    def win_rate_b(self) -> float:
        """Share of B's wins among impressions that had a winner (0.5: no preference)."""
        decided = self.wins_a + self.wins_b
        return self.wins_b / decided if decided else 0.5


def credit(clicks: np.ndarray, team: np.ndarray) -> InterleavingResult:
    """Who won each impression, and the two-sided binomial (sign) test of B's win rate
    against 1/2 over the impressions with a winner."""
    clicks_b = (clicks & (team == 1)).sum(axis=1)
    clicks_a = (clicks & (team == 0)).sum(axis=1)
    wins_a, wins_b = int((clicks_a > clicks_b).sum()), int((clicks_b > clicks_a).sum())
    ties = len(clicks) - wins_a - wins_b
    decided = wins_a + wins_b
    p = stats.binomtest(wins_b, decided, 0.5).pvalue if decided else 1.0
    return InterleavingResult(wins_a, wins_b, ties, float(p))

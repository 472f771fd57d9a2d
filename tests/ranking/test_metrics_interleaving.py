from __future__ import annotations

import numpy as np
import pytest

from ranking.interleaving import credit, team_draft
from ranking.metrics import dcg_at_k, ndcg_at_k


def test_dcg_and_ndcg_known_values() -> None:
    grades = np.array([[3, 2, 0], [0, 2, 3]])
    assert np.allclose(dcg_at_k(grades, gain="exponential"),
                       [7 + 3 / np.log2(3), 3 / np.log2(3) + 7 / 2])
    ndcg = ndcg_at_k(grades, grades)
    assert ndcg[0] == pytest.approx(1.0) and 0 < ndcg[1] < 1
    assert ndcg_at_k(np.zeros((1, 3)), np.zeros((1, 3)))[0] == 0.0  # nothing relevant
    assert dcg_at_k(grades, k=1, gain="exponential").tolist() == [7.0, 0.0]


def test_team_draft_invariants() -> None:
    rng = np.random.default_rng(0)
    n, m, k = 5000, 12, 8
    a = np.argsort(rng.random((n, m)), axis=1)
    b = np.argsort(rng.random((n, m)), axis=1)
    shown, team = team_draft(a, b, k, rng)
    assert all(len(set(row)) == k for row in shown[:500])  # no item twice
    counts = team.sum(axis=1)
    assert np.all(np.abs(counts - (k - counts)) <= 1)  # teams stay balanced
    for row in range(200):  # each team's items appear in its ranker's order
        for who, ranking in ((0, a[row]), (1, b[row])):
            mine = shown[row][team[row] == who]
            order = [list(ranking).index(item) for item in mine]
            assert order == sorted(order)
    assert abs((team[:, 0] == 0).mean() - 0.5) < 0.03  # a fair coin picks first


def test_identical_rankers_tie_and_credit_counts_clicks() -> None:
    rng = np.random.default_rng(1)
    ranking = np.tile(np.arange(10), (4000, 1))
    shown, team = team_draft(ranking, ranking, 6, rng)
    clicks = rng.random(shown.shape) < 0.2
    result = credit(clicks, team)
    assert result.wins_a + result.wins_b + result.ties == 4000
    assert abs(result.win_rate_b - 0.5) < 0.05 and result.p_value > 0.01
    assert credit(np.array([[True, False]]), np.array([[1, 0]])).wins_b == 1


def test_rankings_that_cannot_fill_k_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot fill k=5"):
        team_draft(np.zeros((2, 3), dtype=int), np.zeros((2, 3), dtype=int), 5,
                   np.random.default_rng(0))

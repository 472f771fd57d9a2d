"""Click models against their own definitions, and the position bias they put in a log."""

from __future__ import annotations

import numpy as np
import pytest

from simulation.clicks import (
    ULTR_EXAMINATION,
    CascadeModel,
    PositionBasedModel,
    TrustBiasModel,
    attractiveness,
    examination,
)
from simulation.policies import UniformRandomPolicy
from simulation.simulator import simulate
from simulation.world import World

Z = 4.5  # tolerance in binomial standard errors, wide enough for the many cells tested


def _within_binomial(clicks: np.ndarray, expected: np.ndarray) -> None:
    """Every cell's click rate within Z standard errors of its expected probability."""
    rate = clicks.mean(axis=0)
    sigma = np.sqrt(expected * (1 - expected) / clicks.shape[0])
    assert np.all(np.abs(rate - expected) <= Z * sigma + 1e-9), (rate, expected)


def test_examination_presets() -> None:
    assert np.allclose(examination(10, 1.0), ULTR_EXAMINATION)
    assert np.allclose(examination(12, 2.0)[-2:], ULTR_EXAMINATION[-1] ** 2)
    assert np.allclose(examination(4, 0.5, "inverse"), (1 / np.arange(1, 5)) ** 0.5)
    with pytest.raises(ValueError, match="eta=-1"):
        examination(3, -1)


@pytest.mark.parametrize("grade", range(5))
def test_pbm_ctr_by_position_is_theta_times_click_probability(grade: int) -> None:
    theta = examination(10, 1.0)
    model = PositionBasedModel(theta, noise_floor=0.1, false_negative=0.2)
    grades = np.full((200_000, 10), grade)
    clicks = model.sample(grades, np.random.default_rng(grade))
    expected = theta * attractiveness(np.array([grade]), 0.1)[0] * 0.8
    _within_binomial(clicks, expected)


def test_pbm_ctr_by_position_in_a_simulated_log() -> None:
    """Slots of a whole simulated log, by position and true grade: CTR = theta_k x P(c|g)."""
    world = World(n_items=2000, n_users=500, seed=3)
    theta = examination(10, 1.0)
    model = PositionBasedModel(theta, noise_floor=0.05)
    log = simulate(world, UniformRandomPolicy(), model, n=60_000, k=10, seed=1)
    for grade in range(5):
        for position in range(10):
            shown = log.grades[:, position] == grade
            if shown.sum() < 500:
                continue
            p = theta[position] * attractiveness(np.array([grade]), 0.05)[0]
            rate = log.clicks[shown, position].mean()
            assert abs(rate - p) <= Z * np.sqrt(p * (1 - p) / shown.sum()), (grade, position)


def test_cascade_and_dependent_click_model_match_their_closed_form() -> None:
    grades = np.tile(np.array([3, 0, 4, 1, 2, 0, 4, 1]), (150_000, 1))
    for go_on in (0.0, 0.5):
        model = CascadeModel(noise_floor=0.1, continue_after_click=go_on)
        clicks = model.sample(grades, np.random.default_rng(7))
        _within_binomial(clicks, model.click_probability(grades)[0])
    pure = CascadeModel(continue_after_click=0.0).sample(grades, np.random.default_rng(8))
    assert pure.sum(axis=1).max() == 1  # the pure cascade stops at the first click


def test_trust_bias_clicks_on_irrelevant_items_more_at_the_top() -> None:
    model = TrustBiasModel.decaying(10)
    grades = np.tile(np.array([0, 4] * 5), (150_000, 1))
    clicks = model.sample(grades, np.random.default_rng(9))
    _within_binomial(clicks, model.click_probability(grades)[0])
    false_positive = model.click_probability(grades)[0][::2] / model.theta[::2]
    assert np.all(np.diff(false_positive) < 0)


def test_naive_ctr_shows_position_bias_and_ips_removes_it() -> None:
    """Uniformly random slates: every position sees the same items, so without position bias
    CTR would be flat. Naive CTR falls with position like theta; dividing clicks by the true
    examination propensity (IPS) gives the same mean attractiveness at every position."""
    world = World(n_items=2000, n_users=500, seed=5)
    theta = examination(10, 1.0)
    log = simulate(world, UniformRandomPolicy(), PositionBasedModel(theta, noise_floor=0.05),
                   n=80_000, k=10, seed=2)
    naive = log.clicks.mean(axis=0)
    ips = (log.clicks / theta).mean(axis=0)
    truth = attractiveness(log.grades, 0.05).mean()
    assert naive[0] > 5 * naive[-1]  # the bias is there ...
    assert np.corrcoef(naive, theta)[0, 1] > 0.99
    se = np.sqrt(naive * (1 - naive) / log.n) / theta
    assert np.all(np.abs(ips - truth) <= Z * se)  # ... and IPS removes it
    assert ips.std() / ips.mean() < 0.05 < naive.std() / naive.mean()


def test_rates_are_checked() -> None:
    with pytest.raises(ValueError, match="noise_floor=1.5"):
        PositionBasedModel(examination(3), noise_floor=1.5)

"""Propensity estimators against the simulator's known examination curve, and the exposure
formulas and weight diagnostics on hand-made numbers."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest
from scipy.special import expit
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import SplineTransformer

from ingest.joins import impression_click_join
from models.propensity import (
    ExposureModel,
    InterventionHarvesting,
    PopularityPropensity,
    RegressionEM,
    clip_propensities,
    effective_sample_size,
    inverse_propensity_weights,
    popularity_propensity,
    weight_quantiles,
    weight_summary,
)
from simulation.clicks import PositionBasedModel, examination
from simulation.policies import EpsilonGreedyPolicy, noisy_oracle_policy
from simulation.simulator import simulate
from simulation.world import World

THETA = examination(10, eta=1.0)
#: The curve every estimator should find: 1, .897, .706, .500, .412 for the top 5.
TRUE = THETA / THETA[0]
TOP = 5


def _rows(world: World, policy: object, n: int, seed: int, first_request: int = 0
          ) -> pl.DataFrame:
    frames = simulate(world, policy, PositionBasedModel(THETA), n=n, k=10, seed=seed,
                      first_request=first_request).frames()
    return impression_click_join(frames["impression"].lazy(), frames["click"].lazy()).collect()


def _error(curve: np.ndarray) -> np.ndarray:
    """Relative error per position, top 5."""
    return np.abs(curve[:TOP] / TRUE[:TOP] - 1)


def _naive(rows: pl.DataFrame) -> np.ndarray:
    ctr = rows.group_by("position").agg(pl.col("clicked").mean()).sort("position")["clicked"]
    return ctr.to_numpy() / ctr[0]


@pytest.fixture(scope="module")
def world() -> World:
    # Few users and items, so that (user, item) pairs come back at several positions: only
    # then can a per-pair relevance be told apart from position.
    return World(n_items=300, n_users=100, seed=0)


@pytest.fixture(scope="module")
def ranked_log(world: World) -> pl.DataFrame:
    """A ranker that is good at its job (true affinity plus noise) with 5% exploration:
    the top holds the relevant items, so click rates fall faster than examination."""
    policy = EpsilonGreedyPolicy(noisy_oracle_policy(world, 0.5), 0.05)
    return _rows(world, policy, n=100_000, seed=0)


@pytest.fixture(scope="module")
def two_rankers_log(world: World) -> pl.DataFrame:
    """Two deterministic rankers of different quality, 50k impressions each."""
    return pl.concat([
        _rows(world, noisy_oracle_policy(world, 0.5), n=50_000, seed=1),
        _rows(world, noisy_oracle_policy(world, 1.0, salt=1), n=50_000, seed=2,
              first_request=50_000),
    ])


def test_the_ranked_log_is_biased_beyond_position_bias(ranked_log: pl.DataFrame) -> None:
    """What the estimators must undo: click-through rates by position put relevance on top
    of examination (measured: 1, .782, .550, .343, .244, 41% below the truth at 5)."""
    assert _error(_naive(ranked_log))[TOP - 1] > 0.3


def test_regression_em_recovers_the_examination_curve(ranked_log: pl.DataFrame) -> None:
    """Per-(user, item) relevance table. Measured: 1, .898, .710, .503, .415 against
    1, .897, .706, .500, .412 (at most 0.9% off); the bound is 10% per position."""
    model = RegressionEM().fit(ranked_log)
    assert model.converged_ and model.key_ == ("user_id", "item_id")
    assert model.examination_.shape == (10,) and model.examination_[0] == 1
    assert np.all(_error(model.examination_) <= 0.10), model.examination_[:TOP]
    np.testing.assert_allclose(model.predict([1, 3]), model.examination_[[0, 2]])
    table = model.relevance_table()
    assert table.columns == ["user_id", "item_id", "relevance"]
    assert table["relevance"].is_between(0, 1).all()


@pytest.mark.parametrize("labels", ["expected", "sampled"])
def test_regression_em_with_a_relevance_model_over_features(
        world: World, ranked_log: pl.DataFrame, labels: str) -> None:
    """The paper's regression M-step: a logistic regression over splines of a feature that
    carries the relevance (here the world's affinity, where a real system would have text
    match or item statistics). Measured: expected labels 1, .882, .693, .487, .397 (at
    most 3.5% off), sampled labels (100 iterations) 1, .899, .706, .497, .407 (at most
    1.3% off); the bound is 10%."""
    users = ranked_log["user_id"].str.slice(1).cast(pl.Int64).to_numpy()
    items = ranked_log["item_id"].str.slice(1).cast(pl.Int64).to_numpy()
    # Rounded, so the classifier (fitted once per distinct feature row) sees a few hundred
    # rows rather than one per (user, item) pair.
    affinity = np.round(world.affinity(users, items), 2)[:, None]
    features = SplineTransformer(n_knots=12).fit_transform(affinity)
    model = RegressionEM(relevance=LogisticRegression(C=10.0), labels=labels,
                         max_iter=500 if labels == "expected" else 100
                         ).fit(ranked_log, features)
    assert model.converged_ and model.relevance_ is None
    assert np.all(_error(model.examination_) <= 0.10), model.examination_[:TOP]
    proba = model.relevance_model_.predict_proba(features[:3])
    assert proba.shape == (3, 2)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_regression_em_reads_arrays_as_it_reads_frames(ranked_log: pl.DataFrame) -> None:
    rows = ranked_log.head(100_000)
    arrays = {name: rows[name].to_numpy() for name in ("user_id", "item_id", "position",
                                                      "clicked")}
    from_frame = RegressionEM(max_iter=20).fit(rows.lazy())
    from_arrays = RegressionEM(max_iter=20).fit(arrays)
    np.testing.assert_allclose(from_arrays.examination_, from_frame.examination_)


@pytest.mark.parametrize("estimator", ["all_pairs", "ratio"])
def test_intervention_harvesting_recovers_the_curve_from_two_rankers(
        two_rankers_log: pl.DataFrame, estimator: str) -> None:
    """Measured, top 5: AllPairs 1, .885, .697, .496, .409 (at most 1.3% off), ratio
    1, .884, .689, .499, .397 (at most 3.6% off); the bound is 10% per position. Click
    rates of the same log are 21% to 37% off at positions 3 to 5."""
    assert _error(_naive(two_rankers_log))[2] > 0.15
    model = InterventionHarvesting(estimator=estimator).fit(two_rankers_log)
    assert model.converged_ and model.examination_[0] == 1
    assert np.all(_error(model.examination_) <= 0.10), model.examination_[:TOP]
    # Every pair of positions rests on keys both rankers put there.
    off_diagonal = ~np.eye(10, dtype=bool)
    assert model.interventions_.shape == (10, 10) and model.interventions_[off_diagonal].min() > 0


def test_intervention_harvesting_needs_positions_that_share_keys() -> None:
    """Item c is only ever at position 3: nothing says whether its clicks are position or
    relevance, so position 3 is refused rather than guessed."""
    log = {"user_id": ["u"] * 6, "item_id": ["a", "a", "b", "b", "c", "c"],
           "position": [1, 2, 2, 1, 3, 3], "clicked": [True, False, True, True, False, True]}
    with pytest.raises(ValueError, match=r"positions \[3\] share no key with position 1"):
        InterventionHarvesting().fit(log)
    with pytest.raises(ValueError, match=r"positions \[3\]: no key shown there"):
        InterventionHarvesting(estimator="ratio").fit(log)
    # Above position 3 the log is well posed, and c drops out with its slots.
    assert InterventionHarvesting(n_positions=2).fit(log).examination_.shape == (2,)
    table = RegressionEM(n_positions=2).fit(log).relevance_table()
    assert table["item_id"].to_list() == ["a", "b"]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_fit_and_predict_errors_name_the_problem() -> None:
    log = {"user_id": ["u", "u", "v"], "item_id": ["a", "a", "a"], "position": [1, 2, 1],
           "clicked": [True, False, True]}
    with pytest.raises(NotFittedError, match="RegressionEM is not fitted yet"):
        RegressionEM().predict([1])
    with pytest.raises(ValueError, match=r"positions \[3, 4\] have no slots"):
        RegressionEM(n_positions=4).fit(log)
    with pytest.raises(ValueError, match="log has no column 'clicked'"):
        RegressionEM().fit({name: log[name] for name in ("user_id", "item_id", "position")})
    with pytest.raises(ValueError, match="position=0 must be >= 1"):
        RegressionEM().fit({**log, "position": [0, 1, 2]})
    with pytest.raises(ValueError, match="features=None must be an array"):
        RegressionEM(relevance=LogisticRegression()).fit(log)
    with pytest.raises(ValueError, match=r"position=\[3\] must be in \[1, 2\]"):
        RegressionEM(max_iter=5).fit(log).predict([1, 3])


def test_saito_popularity_propensity_on_hand_made_counts() -> None:
    """theta_i = (n_i+ / max n+) ** eta, with n+ = 0, 1, 4, 16 clicks."""
    counts = [0, 1, 4, 16]
    np.testing.assert_allclose(popularity_propensity(counts, eta=0.5), [0, 0.25, 0.5, 1])
    np.testing.assert_allclose(popularity_propensity(counts, eta=1.0), [0, 1 / 16, 0.25, 1])
    np.testing.assert_allclose(popularity_propensity(counts, eta=0.0), [1, 1, 1, 1])
    # The same counts from a log: 16 clicks on i1, 4 on i2, 1 on i3, i4 shown unclicked.
    items = ["i1"] * 16 + ["i2"] * 4 + ["i3"] + ["i4"] * 3
    clicked = [True] * 21 + [False] * 3
    model = PopularityPropensity(eta=0.5).fit({"item_id": items, "clicked": clicked})
    assert model.items_.tolist() == ["i1", "i2", "i3", "i4"]
    assert model.positives_.tolist() == [16, 4, 1, 0]
    np.testing.assert_allclose(model.propensity_, [1, 0.5, 0.25, 0])
    # An item the log never showed had no clicks either.
    np.testing.assert_allclose(model.predict(["i2", "i9", "i1"]), [0.5, 0, 1])


def test_exposure_model_recovers_a_known_logistic_exposure() -> None:
    """Exposure drawn from P(O_ui) = sigma(-3 + x_i + 0.5 z_u) over a 400 x 300 grid (7.3%
    exposed); fitted on the exposed pairs and 4 sampled unexposed ones per exposed pair.
    Measured: coefficients .53 and .98, corrected intercept -3.0, probabilities at most
    .022 off; the bounds are .05 absolute and 10% relative at the median."""
    rng = np.random.default_rng(0)
    user_x, item_x = rng.normal(size=(400, 1)), rng.normal(size=(300, 1))
    truth = expit(-3 + item_x[:, 0][None, :] + 0.5 * user_x[:, 0][:, None])
    users, items = np.nonzero(rng.random(truth.shape) < truth)
    model = ExposureModel(popularity=False, negatives=4).fit(users, items, user_x, item_x)
    grid_users, grid_items = np.indices(truth.shape).reshape(2, -1)
    estimate = model.predict(grid_users, grid_items).reshape(truth.shape)
    assert np.abs(estimate - truth).max() <= 0.05
    assert np.median(np.abs(estimate / truth - 1)) <= 0.10
    np.testing.assert_allclose(model.model_.coef_[0], [0.5, 1.0], atol=0.1)
    # With popularity alone, the propensity keeps the log's exposure rate on average.
    by_popularity = ExposureModel().fit(users, items)
    average = by_popularity.predict(grid_users, grid_items).mean()
    assert average == pytest.approx(by_popularity.exposure_rate_, rel=0.05)


def test_effective_sample_size_on_hand_made_weights() -> None:
    """Kish: (sum w)^2 / sum w^2."""
    assert effective_sample_size([1, 1, 1, 1]) == pytest.approx(4)
    assert effective_sample_size([5, 0, 0, 0]) == pytest.approx(1)
    assert effective_sample_size([1, 2, 3]) == pytest.approx(36 / 14)
    assert weight_quantiles([1, 2, 3, 4, 5], q=(0.5, 1.0)) == {0.5: 3.0, 1.0: 5.0}
    summary = weight_summary([1, 1, 1, 9], q=(0.5,))
    assert (summary.n, summary.mean, summary.max, summary.quantiles) == (4, 3.0, 9.0, {0.5: 1.0})
    assert summary.effective_sample_size == pytest.approx(144 / 84)
    assert summary.effective_share == pytest.approx(144 / 84 / 4)
    with pytest.raises(ValueError, match=r"weights=\[-1.0\] must be finite and >= 0"):
        effective_sample_size([1, -1])


def test_the_clipping_floor_bounds_the_weights() -> None:
    np.testing.assert_allclose(clip_propensities([0.001, 0.5, 1.0], floor=0.01), [0.01, 0.5, 1])
    np.testing.assert_allclose(inverse_propensity_weights([0.0, 0.25, 1.0], floor=0.1),
                               [10, 4, 1])
    with pytest.raises(ValueError, match=r"propensities=\[1.5\] must be in \[0, 1\]"):
        clip_propensities([0.5, 1.5], floor=0.1)


BAD_HYPER_PARAMETERS = [
    (lambda: RegressionEM(relevance="gbdt"), "relevance='gbdt' must be 'table' or"),
    (lambda: RegressionEM(max_iter=0), "max_iter=0 must be an integer >= 1"),
    (lambda: RegressionEM(tol=-1.0), "tol=-1.0 must be >= 0"),
    (lambda: RegressionEM(n_positions=0), "n_positions=0 must be None or >= 1"),
    (lambda: RegressionEM(key=()), r"key=\(\) must be None or a non-empty tuple"),
    (lambda: RegressionEM(labels="hard"), "labels='hard' must be 'expected' or 'sampled'"),
    (lambda: RegressionEM(labels="sampled"), "labels='sampled' must be 'expected' with"),
    (lambda: InterventionHarvesting(estimator="swap"), "estimator='swap' must be"),
    (lambda: InterventionHarvesting(n_positions=1), "n_positions=1 must be None or >= 2"),
    (lambda: PopularityPropensity(eta=-0.5), r"eta=-0.5 must be >= 0"),
    (lambda: popularity_propensity([1, -2]), r"positives=\[-2.0\] must be >= 0"),
    (lambda: popularity_propensity([0, 0]), "positives='all zero' must have a positive"),
    (lambda: ExposureModel(negatives=0), "negatives=0 must be an integer >= 1"),
    (lambda: ExposureModel(model="logit"), "model='logit' must be None or a scikit-learn"),
    (lambda: clip_propensities([0.5], floor=0.0), r"floor=0.0 must be in \(0, 1\]"),
    (lambda: weight_quantiles([1.0], q=(1.5,)), r"q=1.5 must hold quantiles in \[0, 1\]"),
]


@pytest.mark.parametrize(("make", "message"), BAD_HYPER_PARAMETERS,
                         ids=[message.split("=")[0] for _, message in BAD_HYPER_PARAMETERS])
def test_bad_hyper_parameters_name_the_field_and_the_value(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_hyper_parameters_are_frozen_and_fitting_keeps_them() -> None:
    model = RegressionEM(max_iter=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.max_iter = 6  # type: ignore[misc]
    log = {"user_id": ["u", "u", "v"], "item_id": ["a", "a", "a"], "position": [1, 2, 1],
           "clicked": [True, False, True]}
    assert model.fit(log) is model and model.max_iter == 5
    assert model == RegressionEM(max_iter=5)  # equality is by hyper-parameters


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_a_search_log_is_keyed_by_query_and_item() -> None:
    """Relevance belongs to what was asked, not to who asked; rows without a query (a
    browse among searches) share the null query."""
    log = {"user_id": ["u", "v", "u", "v"], "query": ["red coat", "red coat", None, None],
           "item_id": ["a", "a", "a", "a"], "position": [1, 2, 2, 1],
           "clicked": [True, False, True, False]}
    model = RegressionEM(max_iter=5).fit(log)
    assert model.key_ == ("query", "item_id")
    assert set(model.relevance_table()["query"].to_list()) == {"red coat", None}
    without = {name: values for name, values in log.items() if name != "query"}
    assert RegressionEM(max_iter=5).fit(without).key_ == ("user_id", "item_id")

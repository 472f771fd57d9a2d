"""Off-policy estimators: their formulas on hand arrays, interval coverage on synthetic logs with
a known policy value, SLOPE's choice where the answer is known, cross-fitting, and the real Open
Bandit Dataset sample when it is present."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from bandits.ope import (
    DM,
    DR,
    DROS,
    IPW,
    SNDR,
    SNIPW,
    OPEData,
    OPEInputError,
    Replay,
    SwitchDR,
    TabularFeatures,
    bootstrap_rows,
    counts_of,
    cross_fit,
    evaluate,
    percentile_interval,
    resampled_values,
    slope_select,
)

OBD = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "obd"


def _hand() -> OPEData:
    # 4 rows, 2 actions, 2 positions; pi puts 0.75 on action 1 at position 0, 0.5 at position 1.
    dist = np.tile(np.array([[0.25, 0.5], [0.75, 0.5]])[None], (4, 1, 1))
    q = np.tile(np.array([[0.2, 0.4], [0.6, 0.8]])[None], (4, 1, 1))
    return OPEData(reward=np.array([1.0, 0.0, 1.0, 0.0]), action=np.array([1, 0, 0, 1]),
                   position=np.array([0, 0, 1, 1]), pscore=np.array([0.5, 0.5, 0.25, 0.5]),
                   action_dist=dist, estimated_rewards=q)


def test_formulas_on_hand_arrays() -> None:
    data = _hand()
    w = np.array([0.75 / 0.5, 0.25 / 0.5, 0.5 / 0.25, 0.5 / 0.5])  # 1.5, 0.5, 2, 1
    r = data.reward
    q_logged = np.array([0.6, 0.2, 0.4, 0.8])
    q_pi = np.array([0.25 * 0.2 + 0.75 * 0.6] * 2 + [0.5 * 0.4 + 0.5 * 0.8] * 2)  # .5, .6
    np.testing.assert_allclose(data.weight, w)
    assert IPW().estimate(data).value == pytest.approx(np.mean(w * r), abs=1e-12)
    assert SNIPW().estimate(data).value == pytest.approx((w * r).sum() / w.sum(), abs=1e-12)
    assert DM().estimate(data).value == pytest.approx(q_pi.mean(), abs=1e-12)
    dr = q_pi + w * (r - q_logged)
    assert DR().estimate(data).value == pytest.approx(dr.mean(), abs=1e-12)
    sndr = q_pi.mean() + (w * (r - q_logged)).sum() / w.sum()
    assert SNDR().estimate(data).value == pytest.approx(sndr, abs=1e-12)
    switch = q_pi + np.where(w <= 1.5, w, 0.0) * (r - q_logged)
    assert SwitchDR(threshold=1.5).estimate(data).value == pytest.approx(switch.mean(), abs=1e-12)
    assert SwitchDR(threshold=math.inf).estimate(data).value == pytest.approx(dr.mean())
    assert SwitchDR(threshold=0.0).estimate(data).value == pytest.approx(q_pi.mean())
    shrunk = 2.0 * w / (w ** 2 + 2.0)
    assert DROS(shrinkage=2.0).estimate(data).value == pytest.approx(
        (q_pi + shrunk * (r - q_logged)).mean(), abs=1e-12)
    assert DROS(shrinkage=math.inf).estimate(data).value == pytest.approx(dr.mean())
    assert DROS(shrinkage=0.0).estimate(data).value == pytest.approx(q_pi.mean())
    match = np.array([0.75, 0.25, 0.5, 0.5])
    assert Replay().estimate(data).value == pytest.approx((match * r).sum() / match.sum())
    # Each estimate's per-sample terms average to its value.
    for estimator in (IPW(), SNIPW(), DM(), DR(), SNDR(), Replay()):
        est = estimator.estimate(data)
        assert est.per_sample.mean() == pytest.approx(est.value, abs=1e-12)


def test_single_slot_and_bootstrap_counts_match_a_recomputation() -> None:
    rng = np.random.default_rng(3)
    n = 300
    dist = rng.dirichlet(np.ones(4), size=n)[:, :, None]
    data = OPEData(rng.binomial(1, 0.3, n).astype(float), rng.integers(0, 4, n),
                   np.zeros(n, dtype=int), np.full(n, 0.25), dist, rng.uniform(0, 1, (n, 4, 1)))
    rows = bootstrap_rows(n, 5, seed=1)
    counts = counts_of(rows, n)
    assert counts.sum(axis=1).tolist() == [n] * 5
    for estimator in (IPW(), SNIPW(), DM(), DR(), SNDR(), SwitchDR(threshold=2.0), Replay()):
        fast = resampled_values(estimator.estimate(data), counts)
        slow = [estimator.estimate(data.take(r)).value for r in rows]
        np.testing.assert_allclose(fast, slow, rtol=1e-10)


def test_bad_input_names_the_field() -> None:
    data = _hand()
    with pytest.raises(OPEInputError, match=r"pscore=0\.0 \(row 1\) must be in \(0, 1\]"):
        OPEData(data.reward, data.action, data.position, np.array([0.5, 0, 0.5, 0.5]),
                data.action_dist)
    with pytest.raises(OPEInputError, match="action=2 .* must be in 0..1"):
        OPEData(data.reward, np.array([0, 1, 2, 0]), data.position, data.pscore,
                data.action_dist)
    with pytest.raises(OPEInputError, match="estimated_rewards=None: dr needs"):
        DR().estimate(OPEData(data.reward, data.action, data.position, data.pscore,
                              data.action_dist))
    with pytest.raises(OPEInputError, match="threshold=-1 must be at least 0"):
        SwitchDR(threshold=-1)


# A synthetic world: 20 user types, 5 actions, 3 positions, click probability of a user, action
# and position known, so the evaluation policy's value is known exactly.
_USERS, _ACTIONS, _POSITIONS = 20, 5, 3


def _world() -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    rng = np.random.default_rng(2024)
    affinity = rng.normal(size=(_USERS, _ACTIONS))
    examination = np.array([1.0, 0.6, 0.4])
    q = 1 / (1 + np.exp(-(affinity - 1.0)))[:, :, None] * examination  # (U, A, P)
    logging = _softmax(0.5 * rng.normal(size=(_USERS, _ACTIONS, 1)), _POSITIONS)
    target = _softmax(1.5 * affinity[:, :, None], _POSITIONS)  # prefers what users like
    return q, logging, target, float((target * q).sum(axis=1).mean())


def _softmax(logits: np.ndarray, positions: int) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.repeat(e / e.sum(axis=1, keepdims=True), positions, axis=2)


def _log(seed: int, n: int = 2000) -> OPEData:
    q, logging, target, _ = _world()
    rng = np.random.default_rng(seed)
    user, position = rng.integers(0, _USERS, n), rng.integers(0, _POSITIONS, n)
    p = logging[user, :, position]  # (n, A)
    action = (rng.random((n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    reward = rng.binomial(1, q[user, action, position]).astype(float)
    return OPEData(reward, action, position, p[np.arange(n), action], target[user], q[user])


def test_intervals_cover_the_true_value() -> None:
    """50 seeds, 2,000 rows each, 200 resamples: the unbiased estimators' 95% intervals hold the
    true value at least 90% of the time. DR, Switch-DR and DR-OS (tuned by SLOPE, as they ship)
    are unbiased with the true reward model; DR is also unbiased with a wrong one."""
    *_, truth = _world()
    covered: dict[str, int] = {}
    for seed in range(50):
        data = _log(seed)
        wrong = data.with_rewards(np.full_like(data.estimated_rewards, 0.5))
        cases = {"ipw": (IPW(), data), "dr": (DR(), data), "dr-wrong-model": (DR(), wrong),
                 "switch-dr": (SwitchDR(), data), "dr-os": (DROS(), data),
                 "snipw": (SNIPW(), data),
                 "dm-wrong-model": (DM(), wrong), "dm": (DM(), data)}
        counts = counts_of(bootstrap_rows(data.n, 200, seed=10_000 + seed), data.n)
        for name, (estimator, d) in cases.items():
            low, high = percentile_interval(resampled_values(estimator.estimate(d), counts))
            covered[name] = covered.get(name, 0) + int(low <= truth <= high)
    rate = {name: c / 50 for name, c in covered.items()}
    for name in ("ipw", "dr", "dr-wrong-model", "switch-dr", "dr-os"):
        assert rate[name] >= 0.90, rate
    # SNIPW is biased by O(1/n), small here: it covers as often as the unbiased ones (0.90).
    assert rate["snipw"] >= 0.90, rate
    # DM is as biased as its reward model: a wrong one (q = 0.5) never covers the value.
    assert rate["dm-wrong-model"] == 0.0, rate
    assert rate["dm"] >= 0.90, rate  # with the true model its bias is zero


def test_slope_picks_the_direct_method_when_the_model_is_right_and_dr_when_it_is_wrong() -> None:
    data = _log(7, n=20_000)
    right = SwitchDR().estimate(data)
    assert right.hyperparameter == 0.0  # every candidate unbiased: the least variable wins
    assert DROS().estimate(data).hyperparameter == 0.0
    wrong = SwitchDR().estimate(data.with_rewards(np.full_like(data.estimated_rewards, 0.9)))
    assert wrong.hyperparameter >= data.weight.max()  # no weight switched off: DR
    *_, truth = _world()
    assert abs(wrong.value - truth) < 3 * wrong.std_error


def test_slope_select_rule() -> None:
    # Intervals (width 2 se): [0.8, 1.2], [0.9, 1.1], [1.15, 1.25], ...: the third misses the
    # second, so the second is chosen.
    assert slope_select(np.array([1.0, 1.0, 1.2, 1.2]), np.array([0.1, 0.05, 0.025, 0.01])) == 1
    assert slope_select(np.array([1.0, 1.05, 1.08]), np.array([0.1, 0.05, 0.02])) == 2
    assert slope_select(np.array([0.5]), np.array([0.1])) == 0


def test_cross_fit_predicts_each_row_from_the_other_folds() -> None:
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    n, a, p = 600, 3, 2
    user, item = rng.normal(size=(n, 2)), np.eye(a)
    action, position = rng.integers(0, a, n), rng.integers(0, p, n)
    truth = user[:, :1] + np.arange(a)[None, :]  # (n, a): linear in the features
    reward = truth[np.arange(n), action] + rng.normal(0, 0.01, n)
    features = TabularFeatures(user, item, action, position, p)
    q = cross_fit(LinearRegression, features, reward, folds=3, seed=0)
    assert q.shape == (n, a, p)
    np.testing.assert_allclose(q, np.repeat(truth[:, :, None], p, axis=2), atol=0.01)
    with pytest.raises(OPEInputError, match="folds=1 must be between 2"):
        cross_fit(LinearRegression, features, reward, folds=1)


def test_evaluate_reports_every_estimator_in_the_issue_shape() -> None:
    data = _log(1)
    *_, truth = _world()
    report = evaluate(data, n_bootstrap=50, seed=0, truth=truth)
    assert report["truth"] == truth
    assert set(report["estimators"]) == {"dm", "ipw", "snipw", "dr", "sndr", "switch-dr",
                                         "dr-os", "replay"}
    for entry in report["estimators"].values():
        low, high = entry["ci"]
        assert low <= entry["estimate"] <= high
        assert 0 <= entry["relative_error"]["mean"] < 0.5
    no_model = OPEData(data.reward, data.action, data.position, data.pscore, data.action_dist)
    assert set(evaluate(no_model, n_bootstrap=5)["estimators"]) == {"ipw", "snipw", "replay"}


@pytest.mark.skipif(not OBD.is_dir(), reason="the Open Bandit Dataset sample is not present")
def test_real_obd_sample() -> None:
    """BTS's value from the random log: every estimator within 60% of the BTS log's CTR, and
    the unbiased IPW's interval holding it."""
    from bandits.ope.obd import on_policy_value, read_item_context, read_obd_log, read_policy_dist
    from bandits.ope.reward_model import logistic_baseline

    log = read_obd_log(OBD / "random/men/men.csv",
                       read_item_context(OBD / "random/men/item_context.csv"),
                       read_policy_dist(OBD / "bts/men/bts_action_dist.csv"))
    truth = on_policy_value(OBD / "bts/men/men.csv")
    assert truth == pytest.approx(0.0069, abs=1e-4)
    q = cross_fit(logistic_baseline, log.features(), log.data.reward, folds=3, seed=0)
    report = evaluate(log.data.with_rewards(q), n_bootstrap=200, seed=0, truth=truth)
    for name, entry in report["estimators"].items():
        assert abs(entry["estimate"] - truth) / truth < 0.6, (name, entry)
    low, high = report["estimators"]["ipw"]["ci"]
    assert low <= truth <= high


def test_reports_with_an_infinite_threshold_are_strict_json() -> None:
    import json

    from bandits.ope import jsonable

    report = {"estimators": {"dr-os": {"hyperparameter": math.inf, "ci": [0.1, -math.inf]}}}
    text = json.dumps(jsonable(report), allow_nan=False)
    assert json.loads(text) == {"estimators": {"dr-os": {"hyperparameter": "inf",
                                                         "ci": [0.1, "-inf"]}}}

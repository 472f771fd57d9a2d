"""``clickloop ope`` on a small log in the Open Bandit Dataset's layout that the test writes:
the table and the JSON report in the issue's shape, and one clear error for each bad input."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from serving.ope_cli import OpeCliError, add_ope_command
from tests.bandits.test_ope_generic import (
    EXAMINATION,
    ITEMS,
    N_POSITIONS,
    RELEVANCE,
    sim_items,
    simulated_frames,
    write_checkpoint,
    write_generic_log,
    write_store,
)

_ITEMS, _POSITIONS = 4, 3


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_ope_command(parser.add_subparsers())
    return parser.parse_args(["ope", *argv])


def _write_log(path: Path, n: int, dist: np.ndarray | None, seed: int) -> None:
    """n rows; items drawn uniformly (pscore 1/4) or from ``dist`` at each position."""
    rng = np.random.default_rng(seed)
    ctr = np.array([0.05, 0.1, 0.2, 0.3])
    lines = [",timestamp,item_id,position,click,propensity_score,user_feature_0,"
             + ",".join(f"user-item_affinity_{i}" for i in range(_ITEMS))]
    for row in range(n):
        position = row % _POSITIONS
        p = np.full(_ITEMS, 1 / _ITEMS) if dist is None else dist[:, position]
        item = int(rng.choice(_ITEMS, p=p))
        click = int(rng.random() < ctr[item] / (1 + position))
        affinity = ",".join("0.0" for _ in range(_ITEMS))
        lines.append(f"{row},2019-11-24 00:{row // 60 % 60:02d}:{row % 60:02d}+00:00,{item},"
                     f"{position + 1},{click},{p[item]},u{row % 3},{affinity}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    dist = np.array([[0.1, 0.1, 0.2], [0.1, 0.2, 0.2], [0.3, 0.3, 0.3], [0.5, 0.4, 0.3]])
    paths = {name: tmp_path / f"{name}.csv" for name in ("log", "items", "dist", "truth")}
    _write_log(paths["log"], 1200, None, seed=0)
    _write_log(paths["truth"], 1200, dist, seed=1)
    paths["items"].write_text(",item_id,item_feature_0,item_feature_1\n"
                              + "".join(f"{i},{i},{i / 4},c{i % 2}\n" for i in range(_ITEMS)))
    paths["dist"].write_text("# item x position\n"
                             + "".join(",".join(map(str, r)) + "\n" for r in dist))
    return paths


def test_ope_writes_the_report(files: dict[str, Path], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "ope.json"
    args = _parse("--log", str(files["log"]), "--item-context", str(files["items"]),
                  "--policy-dist", str(files["dist"]), "--truth-log", str(files["truth"]),
                  "--bootstrap", "8", "--json", str(out), "--seed", "3")
    assert args.func(args, None) == 0
    report = json.loads(out.read_text())
    clicks = [int(line.split(",")[4]) for line in files["truth"].read_text().splitlines()[1:]]
    assert report["truth"] == pytest.approx(np.mean(clicks), abs=1e-12)
    assert set(report["estimators"]) == {"dm", "ipw", "snipw", "dr", "sndr", "switch-dr",
                                         "dr-os", "replay"}
    for entry in report["estimators"].values():
        low, high = entry["ci"]
        assert low <= high and set(entry["relative_error"]) == {"mean", "std"}
        # 1,200 rows estimate a value near 0.13 within 50%.
        assert abs(entry["estimate"] - report["truth"]) / report["truth"] < 0.5
    shown = capsys.readouterr().out
    assert "switch-dr" in shown and "95% interval" in shown and "relative error" in shown


@pytest.mark.parametrize(("change", "message"), [
    ({"--bootstrap": "1"}, "--bootstrap=1 must be at least 2"),
    ({"--policy-dist": None, "--policy": "linucb"},
     "--policy linucb: policy='linucb' must be one of uniform, logged, learner:DIR"),
    ({"--policy-dist": None, "--policy": "learner:state"},
     "--policy learner:state needs --format log"),
    ({"--policy-dist": None}, "no evaluation policy: pass --policy-dist FILE or --policy NAME"),
    ({"--item-context": "missing.csv"}, "--item-context missing.csv: no such file"),
    ({"--item-context": None}, "--format obd needs --item-context FILE"),
    ({"--context-fields": "age"}, "--context-fields is for --format log only (not obd)"),
])
def test_bad_input_is_one_clear_error(files: dict[str, Path], change: dict[str, str | None],
                                      message: str) -> None:
    flags = {"--log": str(files["log"]), "--item-context": str(files["items"]),
             "--policy-dist": str(files["dist"])} | change
    argv = [x for flag, value in flags.items() if value is not None for x in (flag, value)]
    args = _parse(*argv)
    with pytest.raises(OpeCliError, match=re.escape(message)):
        args.func(args, None)


def test_a_policy_that_does_not_fit_the_log_is_named(files: dict[str, Path]) -> None:
    files["dist"].write_text("0.5,0.5,0.5\n0.5,0.5,0.5\n")  # 2 items; the log has 4
    args = _parse("--log", str(files["log"]), "--item-context", str(files["items"]),
                  "--policy-dist", str(files["dist"]))
    with pytest.raises(OpeCliError, match="--item-context has 4 items; the policy "
                                          "distribution has 2 rows"):
        args.func(args, None)


def test_obd_with_a_policy_of_ours(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ope.json"
    clicks = [int(line.split(",")[4]) for line in files["log"].read_text().splitlines()[1:]]
    for name in ("uniform", "logged"):
        args = _parse("--log", str(files["log"]), "--item-context", str(files["items"]),
                      "--policy", name, "--bootstrap", "2", "--json", str(out))
        assert args.func(args, None) == 0
        report = json.loads(out.read_text())
        assert report["policy"] == name and report["n_positions"] == _POSITIONS
        # The log is uniform (pscore 1/4): uniform's weights are all 1, so IPW is the mean.
        if name == "uniform":
            assert report["estimators"]["ipw"]["estimate"] == pytest.approx(
                np.mean(clicks), abs=1e-12)


# ------------------------------------------------------------ --format generic and log

#: The deterministic evaluation policy of the generic tests: "7", "b", "a" at 1, 2, 3.
_TARGET = ("7", "b", "a")


def _run(tmp_path: Path, *argv: str) -> dict:
    out = tmp_path / "ope.json"
    args = _parse(*argv, "--json", str(out))
    assert args.func(args, None) == 0
    return json.loads(out.read_text())


def _estimate(report: dict, name: str) -> float:
    return report["estimators"][name]["estimate"]


def test_generic_estimates_of_a_deterministic_policy_land_near_its_true_value(
        tmp_path: Path) -> None:
    write_generic_log(tmp_path / "log.csv", 4000, seed=0)
    (tmp_path / "policy.csv").write_text("item_id,position,probability\n" + "".join(
        f"{item},{p + 1},1\n" for p, item in enumerate(_TARGET)))
    report = _run(tmp_path, "--log", str(tmp_path / "log.csv"), "--format", "generic",
                  "--policy-dist", str(tmp_path / "policy.csv"), "--bootstrap", "4")
    index = [ITEMS.index(item) for item in _TARGET]
    # Every slate shows all 3 positions: the value per row is the mean over positions.
    truth = float(np.mean(RELEVANCE[index] * EXAMINATION))
    assert truth == pytest.approx(0.256667, abs=1e-6)
    assert report["n_rows"] == 12000 and report["n_items"] == 5
    for name in ("ipw", "snipw", "dr", "sndr"):
        entry = report["estimators"][name]
        # Unbiased or nearly so: within 4 standard errors (each about 0.004) of the truth.
        assert abs(entry["estimate"] - truth) < 4 * entry["std_error"], name
    # DM's reward model is additive in logit space while the true table is a product, so it
    # is biased (0.009 here); SLOPE lets Switch-DR and DR-OS lean on it. Within 0.02.
    for name in ("dm", "switch-dr", "dr-os"):
        assert abs(_estimate(report, name) - truth) < 0.02, name


def test_generic_bad_rows_are_reported_and_the_good_ones_evaluated(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "log.csv"
    write_generic_log(path, 200, seed=1)
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace(",0.2,", ",abc,")   # line 3
    lines[5] = lines[5].replace(",0.2,", ",1.5,")   # line 6
    path.write_text("\n".join(lines) + "\n")
    report = _run(tmp_path, "--log", str(path), "--format", "generic", "--policy", "uniform",
                  "--bootstrap", "2")
    assert report["n_rows"] == 600 - 2
    err = capsys.readouterr().err
    assert f"--log {path}: 2 rows rejected" in err
    assert "line 3: column 'propensity'='abc' is not a number" in err
    assert "line 6: column 'propensity'=1.5 must be in (0, 1]" in err


def test_the_logged_policy_is_the_log_mean(tmp_path: Path) -> None:
    # Balanced: each item is at each position in exactly 1/5 of the rounds, the logged
    # propensity, so every weight is exactly 1.
    clicks = write_generic_log(tmp_path / "balanced.csv", 1000, seed=2, balanced=True)
    report = _run(tmp_path, "--log", str(tmp_path / "balanced.csv"), "--format", "generic",
                  "--policy", "logged", "--bootstrap", "2")
    for name in ("ipw", "snipw", "replay"):
        assert _estimate(report, name) == pytest.approx(clicks.mean(), abs=1e-12), name
    # Drawn at random, the frequencies only approach 1/5: IPW is near the mean.
    clicks = write_generic_log(tmp_path / "random.csv", 2000, seed=3)
    report = _run(tmp_path, "--log", str(tmp_path / "random.csv"), "--format", "generic",
                  "--policy", "logged", "--bootstrap", "2")
    assert abs(_estimate(report, "ipw") - clicks.mean()) < 4 * report["estimators"]["ipw"][
        "std_error"]
    assert abs(_estimate(report, "snipw") - clicks.mean()) < 0.005


def test_the_uniform_policy_on_a_uniform_log(tmp_path: Path) -> None:
    clicks = write_generic_log(tmp_path / "log.csv", 2000, seed=4)
    report = _run(tmp_path, "--log", str(tmp_path / "log.csv"), "--format", "generic",
                  "--policy", "uniform", "--bootstrap", "3")
    # Uniform logging at 1/5 and a uniform policy: weights all 1, IPW is the log's mean.
    assert _estimate(report, "ipw") == pytest.approx(clicks.mean(), abs=1e-12)
    truth = float((RELEVANCE[:, None] * EXAMINATION[None, :]).mean())
    entry = report["estimators"]["dr"]
    assert abs(entry["estimate"] - truth) < 4 * entry["std_error"]


def test_policy_dist_columns_that_do_not_sum_to_one_are_named(tmp_path: Path) -> None:
    write_generic_log(tmp_path / "log.csv", 50, seed=5)
    (tmp_path / "policy.csv").write_text("item_id,position,probability\n7,1,1\nb,2,0.5\n"
                                         "a,3,1\n")
    args = _parse("--log", str(tmp_path / "log.csv"), "--format", "generic",
                  "--policy-dist", str(tmp_path / "policy.csv"))
    with pytest.raises(OpeCliError, match=r"the probabilities of position 2 sum to 0\.5; "
                                          r"each position's must sum to 1"):
        args.func(args, None)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A log store of simulated impressions, a learner checkpoint fed the same events, and
    the item vectors it was trained with."""
    root = tmp_path_factory.mktemp("store")
    frames = simulated_frames(300)
    items = sim_items()
    vectors = items.vectors_[:-1].numpy()  # the last row is the cold-start prior
    pl.DataFrame({"item_id": list(items.index_)} | {
        f"v{j}": vectors[:, j] for j in range(vectors.shape[1])}).write_csv(root / "items.csv")
    return {"store": write_store(root / "log", frames),
            "state": write_checkpoint(root / "state", frames), "items": root / "items.csv"}


def test_a_log_store_is_evaluated_from_its_logged_propensities(
        store: dict[str, Path], tmp_path: Path) -> None:
    from bandits.ope import read_log_store

    report = _run(tmp_path, "--log", str(store["store"]), "--format", "log", "--policy",
                  "uniform", "--truth-log", str(store["store"]), "--bootstrap", "2")
    log = read_log_store(store["store"])
    assert report["n_rows"] == 900 and report["truth"] == pytest.approx(log.reward.mean())
    expected = np.mean(log.reward / log.n_items / log.pscore)
    assert _estimate(report, "ipw") == pytest.approx(expected, rel=1e-12)


def test_a_learner_checkpoint_is_evaluated_as_its_top_k(store: dict[str, Path],
                                                        tmp_path: Path) -> None:
    from bandits.ope import learner_scores, read_log_store

    report = _run(tmp_path, "--log", str(store["store"]), "--format", "log", "--policy",
                  f"learner:{store['state']}", "--items", str(store["items"]),
                  "--bootstrap", "2")
    log = read_log_store(store["store"])
    scores = learner_scores(store["state"], sim_items(), log.item_ids, log.contexts)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :N_POSITIONS]
    shown = top[log.slate, log.position] == log.action
    assert shown.any()
    assert _estimate(report, "ipw") == pytest.approx(np.mean(shown * log.reward / log.pscore),
                                                     rel=1e-12)
    assert _estimate(report, "replay") == pytest.approx(
        log.reward[shown].mean() if shown.any() else 0.0, rel=1e-12)


@pytest.mark.parametrize(("argv", "message"), [
    (("--policy", "learner:{state}"), "--policy learner:{state} needs --items FILE"),
    (("--policy", "uniform", "--items", "{items}"), "--items is for --policy learner:DIR only"),
    (("--policy", "uniform", "--context-fields", "segment"),
     "'segment' is not a numeric field of the contexts"),
])
def test_log_store_misuse_is_one_clear_error(store: dict[str, Path], argv: tuple[str, ...],
                                             message: str) -> None:
    names = {k: str(v) for k, v in store.items()}
    args = _parse("--log", str(store["store"]), "--format", "log",
                  *(a.format(**names) for a in argv))
    with pytest.raises(OpeCliError, match=re.escape(message.format(**names))):
        args.func(args, None)

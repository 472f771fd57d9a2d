"""``clickloop ope`` on a small log in the Open Bandit Dataset's layout that the test writes:
the table and the JSON report in the issue's shape, and one clear error for each bad input."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from serving.ope_cli import OpeCliError, add_ope_command

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
    ({"--format": "generic"}, "--format generic: not available yet"),
    ({"--format": "log"}, "--format log: not available yet"),
    ({"--bootstrap": "1"}, "--bootstrap=1 must be at least 2"),
    ({"--policy-dist": None, "--policy": "linucb"}, "--policy linucb: not available yet"),
    ({"--policy-dist": None}, "no evaluation policy: pass --policy-dist FILE"),
    ({"--item-context": "missing.csv"}, "--item-context missing.csv: no such file"),
])
def test_bad_input_is_one_clear_error(files: dict[str, Path], change: dict[str, str | None],
                                      message: str) -> None:
    flags = {"--log": str(files["log"]), "--item-context": str(files["items"]),
             "--policy-dist": str(files["dist"])} | change
    argv = [x for flag, value in flags.items() if value is not None for x in (flag, value)]
    args = _parse(*argv)
    with pytest.raises(OpeCliError, match=message.replace(".", r"\.")):
        args.func(args, None)


def test_a_policy_that_does_not_fit_the_log_is_named(files: dict[str, Path]) -> None:
    files["dist"].write_text("0.5,0.5,0.5\n0.5,0.5,0.5\n")  # 2 items; the log has 4
    args = _parse("--log", str(files["log"]), "--item-context", str(files["items"]),
                  "--policy-dist", str(files["dist"]))
    with pytest.raises(OpeCliError, match="--item-context has 4 items; the policy "
                                          "distribution has 2 rows"):
        args.func(args, None)

"""The debiasing benchmark's code (``benchmarks/debias.py``) at tiny sizes: the ratings
protocol on Coat when ``../shared/data/coat`` is there, and every section, the JSON and the
figure on data these tests make. They check the pipeline (shapes, ranges, names), not which
model wins."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from ingest.ratings import read_ratings
from tests.conftest import SHARED_DATA

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "debias.py"
COAT = SHARED_DATA / "coat"
MODEL_NAMES = ["MF", "MF-MSE", "BPR", "Rel-MF", "UBPR", "T-CE", "R-CE", "NBPO", "PLD"]
METRICS = [f"{m}@{k}" for m in ("DCG", "Recall", "MAP") for k in (1, 3, 5)]

# Trained without a validation split (the noise and throughput sections): meant.
pytestmark = pytest.mark.filterwarnings("ignore:Total length of `list` across ranks is zero")


@pytest.fixture(scope="module")
def debias() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("debias_benchmark", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def tiny(debias: ModuleType) -> Any:
    """Every section at the smallest size that still runs each code path."""
    return debias.Budget(
        seeds=2, grid=debias.Grid(shared={"dim": (4,), "lr": (0.05,),
                                          "weight_decay": (1e-6, 1e-3)}),
        max_epochs=3, patience=1, batch_size=64,
        ultr_lists=300, ultr_epochs=1, ultr_contexts=50,
        noise_users=60, noise_items=50, noise_epochs=1,
        throughput_rows=3000, throughput_epochs=1, throughput_runs=1)


def _triplets(folder: Path, n_users: int = 40, n_items: int = 30, seed: int = 0) -> Path:
    """A ratings dataset in the triplet layout with ids that are not indices: 12 self-chosen
    ratings per user in train, 5 random items in test (some users without a positive)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    taste = rng.normal(size=(n_users, 2)) @ rng.normal(size=(2, n_items))
    for split, per_user in (("train", 12), ("test", 5)):
        lines = ["user,item,rating"]
        for user in range(n_users):
            weights = np.exp(taste[user]) if split == "train" else np.ones(n_items)
            items = rng.choice(n_items, per_user, replace=False, p=weights / weights.sum())
            for item in items:
                rating = int(np.clip(np.round(3 + taste[user, item]), 1, 5))
                lines.append(f"{1000 + 7 * user},{3 * item + 5},{rating}")
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return folder


def _check_ratings(debias: ModuleType, outcome: dict[str, Any], models: list[str],
                   seeds: int) -> None:
    assert list(outcome["metrics"]) == models
    for model in models:
        metrics = outcome["metrics"][model]
        assert list(metrics) == METRICS
        for name, value in metrics.items():
            assert len(value["runs"]) == seeds and math.isfinite(value["std"])
            # Binary relevance: recall and MAP in [0, 1]; DCG@k at most sum 1/log2(r + 1).
            k = int(name.split("@")[1])
            top = sum(1 / math.log2(r + 1) for r in range(1, k + 1))
            assert 0 <= value["mean"] <= (top if name.startswith("DCG") else 1), (model, name)
        assert set(outcome["chosen"][model]) >= {"dim", "lr", "weight_decay"}
        # Each held-out positive's gain is at most 1 / select_clip (inverse propensity).
        top_at_5 = sum(1 / math.log2(r + 1) for r in range(1, 6))
        most = top_at_5 / debias.Protocol().select_clip
        for trial in outcome["trials"][model]:
            assert 0 <= trial["val_DCG@5"] <= most
    users = outcome["users"]
    assert users["evaluated"] + users["skipped_without_positive_test_item"] == users["all"]


@pytest.mark.skipif(not (COAT / "train.ascii").exists(),
                    reason="Coat is not in ../shared/data")
def test_the_ratings_protocol_runs_on_coat(debias: ModuleType, tiny: Any) -> None:
    ratings = read_ratings(COAT)
    assert (ratings.name, ratings.n_users, ratings.n_items) == ("coat", 290, 300)
    budget = replace(tiny, seeds=1, max_epochs=2,
                     grid=debias.Grid(shared={"dim": (8,), "lr": (0.01,),
                                              "weight_decay": (1e-4,)}))
    outcome = debias.ratings_section(ratings, budget, models=("MF", "Rel-MF"))
    _check_ratings(debias, outcome, ["MF", "Rel-MF"], seeds=1)
    # Coat's test split rates 16 random items of every user; some have no positive.
    assert outcome["users"]["with_test_items"] == 290
    assert 0 < outcome["users"]["evaluated"] < 290


def test_the_ratings_protocol_on_triplets_chooses_on_validation_only(
        debias: ModuleType, tiny: Any, tmp_path: Path) -> None:
    folder = _triplets(tmp_path / "tiny")
    ratings = read_ratings(folder)
    outcome = debias.ratings_section(ratings, tiny, models=("BPR", "Rel-MF", "PLD"))
    _check_ratings(debias, outcome, ["BPR", "Rel-MF", "PLD"], seeds=2)
    # The choice is the trial with the best validation score, among the grid's two.
    for model, trials in outcome["trials"].items():
        assert len(trials) == 2
        best = max(trials, key=lambda trial: trial["val_DCG@5"])
        assert outcome["chosen"][model] == best["options"]
    # Another test split changes the test figures and nothing that was chosen.
    lines = (folder / "test.csv").read_text().splitlines()
    flipped = [lines[0]] + [f"{u},{i},{6 - int(r)}" for u, i, r in
                            (line.split(",") for line in lines[1:])]
    (folder / "test.csv").write_text("\n".join(flipped) + "\n")
    again = debias.ratings_section(read_ratings(folder), tiny, models=("BPR", "Rel-MF", "PLD"))
    assert again["trials"] == outcome["trials"] and again["chosen"] == outcome["chosen"]
    assert again["metrics"] != outcome["metrics"]
    assert set(outcome["goals"]) >= {"best_naive", "best_corrected",
                                     "corrected_level_with_naive"}


def test_user_lists_pad_and_the_metrics_follow_the_scores(debias: ModuleType,
                                                          tmp_path: Path) -> None:
    folder = tmp_path / "hand"
    folder.mkdir()
    (folder / "train.csv").write_text("user,item,rating\n0,0,5\n1,1,5\n")
    # User 0: items 1 (relevant) and 2; user 1: item 0 (not relevant): skipped.
    (folder / "test.csv").write_text("user,item,rating\n0,1,4\n0,2,1\n1,0,3\n")
    ratings = read_ratings(folder)
    lists = debias.user_lists(ratings, 4)
    assert lists.items.tolist() == [[1, 2], [0, 0]]
    np.testing.assert_array_equal(lists.relevance, [[1.0, 0.0], [0.0, np.nan]])
    model = debias.make_model("MF", 2, 3, {"dim": 2}, seed=0, steps_per_epoch=1,
                              max_epochs=1)
    with torch.no_grad():
        model.item_bias.weight.copy_(torch.tensor([[0.0], [-5.0], [5.0]]))
    # Item 2 ranks first: the relevant item is at rank 2.
    values = debias.ranking_metrics(model, lists, (1, 3))
    assert values["DCG@1"] == 0.0 and values["DCG@3"] == pytest.approx(1 / math.log2(3))
    assert values["Recall@3"] == 1.0 and values["MAP@3"] == pytest.approx(0.5)


def test_every_section_writes_the_json_and_the_figure(debias: ModuleType, tiny: Any,
                                                      tmp_path: Path) -> None:
    data = _triplets(tmp_path / "r3-like")
    out = tmp_path / "results" / "debias.json"
    budget = replace(tiny, seeds=1, grid=debias.Grid(shared={"dim": (4,), "lr": (0.05,),
                                                             "weight_decay": (1e-4,)}))
    debias.main(["--data", str(data), "--name", "tiny", "--out", str(out)], budget=budget)
    written = json.loads(out.read_text())
    assert list(written["ratings"]) == ["tiny"]
    assert list(written["ratings"]["tiny"]) == MODEL_NAMES
    assert set(written["ratings"]["tiny"]["MF"]["DCG@5"]) >= {"mean", "std"}
    assert list(written["ultr"]) == ["0.5", "1", "2"]
    assert set(written["ultr_targets"]) == {"ips_within_3pct_of_oracle_at_eta_1",
                                            "dla_within_3pct_of_oracle_at_eta_1"}
    for eta in ("0.5", "1", "2"):
        assert list(written["ultr"][eta]) == ["naive", "ips", "dla", "oracle"]
        assert all(0 <= v <= 1 for v in written["ultr"][eta].values())
    assert list(written["noise"]) == ["0.0", "0.1", "0.2"]
    for recalls in written["noise"].values():
        assert list(recalls) == MODEL_NAMES and all(0 <= v <= 1 for v in recalls.values())
    throughput = written["throughput"]
    assert throughput["lightning"] > 0 and throughput["torch"] > 0
    assert throughput["overhead"] == pytest.approx(throughput["torch"]
                                                   / throughput["lightning"])
    assert written["device"]
    assert out.with_suffix(".png").stat().st_size > 0


def test_a_missing_data_folder_skips_the_ratings_section(debias: ModuleType, tiny: Any,
                                                         tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "d.json"
    debias.main(["--data", str(tmp_path / "absent"), "--out", str(out), "--skip", "ultr",
                 "--skip", "noise", "--skip", "throughput"], budget=tiny)
    assert "ratings: skipped" in capsys.readouterr().out
    written = json.loads(out.read_text())
    assert "ratings" not in written and "ultr" not in written
    assert not out.with_suffix(".png").exists()


def test_the_command_line_refuses_bad_values(debias: ModuleType) -> None:
    with pytest.raises(SystemExit):
        debias.parse_args(["--seeds", "0"])
    with pytest.raises(SystemExit):
        debias.parse_args(["--skip", "everything"])
    with pytest.raises(ValueError, match=r"grid shared\['dim'\]=\(\) must list"):
        debias.Grid(shared={"dim": ()})
    with pytest.raises(ValueError, match="seeds=0 must be >= 1"):
        replace(debias.QUICK, seeds=0)

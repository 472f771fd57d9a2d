"""The learning-to-rank setting: its log is biased the way the module doc says, its features
line up with the join's rows, and its judge gives a perfect ranker 1 and a reversed one less."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from simulation.ltr import HeldOut, RankingExperiment


class ByColumn:
    """Ranks by one feature column (descending), or by the true grades when given them."""

    def __init__(self, grades: np.ndarray | None = None, reverse: bool = False) -> None:
        self.grades, self.reverse = grades, reverse

    def rank(self, features: np.ndarray) -> np.ndarray:
        keys = self.grades if self.grades is not None else features[..., -1]
        order = np.argsort(-keys, axis=1, kind="stable")
        return order[:, ::-1] if self.reverse else order


def test_log_rows_carry_true_grades_and_features_of_the_right_shape() -> None:
    experiment = RankingExperiment(n_items=300, n_users=200, train_users=100, k=5)
    rows = experiment.rows(experiment.log(500))
    assert rows.height == 500 * 5 and rows["grade"].min() >= 0
    assert set(rows["user_id"].str.slice(1).cast(int).to_list()) <= set(range(100))
    features = experiment.features(rows)
    assert features.shape == (rows.height, experiment.world.user_vectors.shape[1] + 1)
    # Position bias: CTR falls with position the way the examination curve does.
    ctr = rows.group_by("position").agg(pl.col("clicked").mean()).sort("position")
    assert ctr["clicked"][0] > ctr["clicked"][4]


def test_judge_scores_the_ideal_order_one_and_a_reversed_order_less() -> None:
    experiment = RankingExperiment(n_items=300, n_users=200, train_users=100)
    held_out = experiment.held_out(n_contexts=200, n_candidates=20)
    assert held_out.features.shape[:2] == held_out.grades.shape == (200, 20)
    ideal = experiment.judge(ByColumn(held_out.grades), held_out)
    worst = experiment.judge(ByColumn(held_out.grades, reverse=True), held_out)
    assert ideal.mean == pytest.approx(1.0) and worst.mean < 0.5
    assert ideal.per_context.shape == (200,)
    assert isinstance(held_out, HeldOut)


@pytest.mark.parametrize(("options", "message"), [
    (dict(train_users=3000), "train_users=3000 must be in"),
    (dict(eta=-1.0), "eta=-1.0"),
    (dict(k=0), "k=0"),
])
def test_bad_settings_name_the_field(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RankingExperiment(**options)

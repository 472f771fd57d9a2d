"""Unbiased learning to rank on click lists: the losses on hand-made tensors, the list data
module, and naive, IPS (listwise and pairwise), DLA and oracle rankers trained on one
simulated log where the true relevance and examination curve are known."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl
import pytest
import torch

from models.ultr import (
    DLA,
    RANKERS,
    IPSListwise,
    IPSPairwise,
    ListDataModule,
    dla_losses,
    fit,
    ips_pairwise_loss,
    ips_softmax_loss,
    propensities_from_curve,
)
from simulation.clicks import examination
from simulation.ltr import RankingExperiment

LN2, LN3, LN4 = math.log(2.0), math.log(3.0), math.log(4.0)
THETA = examination(10, eta=1.0)
#: The curve DLA should find: 1, .897, .706, .500, .412 for the top 5.
TRUE = THETA / THETA[0]
TOP = 5


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))



# --- losses on hand-made tensors -----------------------------------------------------------

def test_ips_softmax_loss_on_hand_made_tensors() -> None:
    # List 1: softmax(0, ln 2, 0) = (1/4, 1/2, 1/4); clicks on slots 1 and 3, weighted
    # 1/0.5 and 1/0.25. List 2 has one real slot (softmax 1: log 0) and padding that
    # would dominate its softmax were it counted.
    scores = torch.tensor([[0.0, LN2, 0.0], [1.0, 50.0, 50.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    propensities = torch.tensor([[0.5, 1.0, 0.25], [0.9, 1.0, 1.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    assert ips_softmax_loss(scores, labels, propensities, mask).item() == pytest.approx(
        (2 * LN4 + 4 * LN4) / 2, rel=1e-6)
    # Naive: every click counts once; capped: the weight 4 becomes 3.
    assert ips_softmax_loss(scores, labels, None, mask).item() == pytest.approx(
        2 * LN4 / 2, rel=1e-6)
    assert ips_softmax_loss(scores, labels, propensities, mask, max_weight=3.0).item() == \
        pytest.approx((2 * LN4 + 3 * LN4) / 2, rel=1e-6)
    # A list without a click adds 0 and still counts in the mean.
    none = torch.zeros(1, 3)
    assert ips_softmax_loss(scores[:1], none).item() == 0.0


def test_ips_weighting_turns_expected_clicks_into_relevance() -> None:
    """Why the weights are 1/theta: with clicks at their expectation theta_k * r, the
    weighted loss is exactly the loss on relevance, for any scores."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 10, generator=generator)
    relevance = torch.rand(4, 10, generator=generator)
    theta = torch.tensor(THETA, dtype=torch.float32).expand(4, 10)
    expected_clicks = theta * relevance
    for loss in (ips_softmax_loss, ips_pairwise_loss):
        assert loss(scores, expected_clicks, theta).item() == pytest.approx(
            loss(scores, relevance).item(), rel=1e-5)
        assert loss(scores, expected_clicks).item() != pytest.approx(
            loss(scores, relevance).item(), rel=1e-2)


def test_ips_pairwise_loss_on_hand_made_tensors() -> None:
    # Slot 1 clicked at propensity 0.5 (weight 2) against slots 2 and 3; slot 4 is padding
    # with a score that would cost most were it counted.
    scores = torch.tensor([[2.0, 0.0, 1.0, 9.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    propensities = torch.tensor([[0.5, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[True, True, True, False]])
    logistic = ips_pairwise_loss(scores, labels, propensities, mask)
    assert logistic.item() == pytest.approx(2 * (softplus(-2.0) + softplus(-1.0)), rel=1e-6)
    # Hinge: max(0, 1 - 2) + max(0, 1 - 1) = 0 here; on (0, 0.5, -1) it is 1.5 + 0.
    assert ips_pairwise_loss(scores, labels, propensities, mask, "hinge").item() == 0.0
    hinge = ips_pairwise_loss(torch.tensor([[0.0, 0.5, -1.0]]), labels[:, :3],
                              propensities[:, :3], form="hinge")
    assert hinge.item() == pytest.approx(2 * 1.5, rel=1e-6)
    # Two clicks: each is paired with every other slot, the other click included.
    both = ips_pairwise_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]))
    assert both.item() == pytest.approx(softplus(-1.0) + softplus(1.0), rel=1e-6)
    with pytest.raises(ValueError, match="form='square' must be"):
        ips_pairwise_loss(scores, labels, form="square")  # type: ignore[arg-type]


def test_dla_losses_on_hand_made_tensors() -> None:
    # Ranker: softmax(0, ln 3) = (1/4, 3/4). Propensity: softmax(ln 2, 0) = (2/3, 1/3).
    # Both slots clicked. Inverse propensity weights g_1/g_i = (1, 2); inverse relevance
    # weights r_1/r_i = (1, 1/3).
    scores = torch.tensor([[0.0, LN3]])
    exam = torch.tensor([[LN2, 0.0]])
    labels = torch.tensor([[1.0, 1.0]])
    ranker, propensity = dla_losses(scores, exam, labels)
    assert ranker.item() == pytest.approx(LN4 + 2 * math.log(4 / 3), rel=1e-6)
    assert propensity.item() == pytest.approx(math.log(3 / 2) + LN3 / 3, rel=1e-6)
    # Capped at 1.5, the weight 2 becomes 1.5.
    capped, _ = dla_losses(scores, exam, labels, max_weight=1.5)
    assert capped.item() == pytest.approx(LN4 + 1.5 * math.log(4 / 3), rel=1e-6)
    # Padding (third slot) changes neither loss.
    padded = dla_losses(torch.tensor([[0.0, LN3, 7.0]]), torch.tensor([[LN2, 0.0, 5.0]]),
                        torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[True, True, False]]))
    assert [p.item() for p in padded] == pytest.approx([ranker.item(), propensity.item()])


def test_each_dla_loss_trains_only_its_own_model() -> None:
    """The other model enters each loss only through detached weights, so one optimizer
    over the sum of the losses makes the paper's two separate updates."""
    scores = torch.tensor([[0.3, -0.2, 0.5]], requires_grad=True)
    exam = torch.tensor([[0.1, 0.4, -0.3]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    ranker, propensity = dla_losses(scores, exam, labels)
    assert torch.autograd.grad(ranker, exam, allow_unused=True)[0] is None
    assert torch.autograd.grad(propensity, scores, allow_unused=True)[0] is None
    assert torch.autograd.grad(ranker, scores)[0].abs().sum() > 0


def test_the_truth_is_a_fixed_point_of_dla() -> None:
    """With clicks at their expectation theta_k * r, a ranker scoring log r and a
    propensity model with logits log theta_k leave both losses at a stationary point."""
    relevance = torch.tensor([[0.9, 0.2, 0.5, 0.1, 0.6]])
    theta = torch.tensor(THETA[None, :5], dtype=torch.float32)
    scores = relevance.log().requires_grad_()
    exam = theta.log().requires_grad_()
    ranker, propensity = dla_losses(scores, exam, theta * relevance)
    assert torch.autograd.grad(ranker, scores)[0].abs().max() < 1e-6
    assert torch.autograd.grad(propensity, exam)[0].abs().max() < 1e-6
    # Anywhere else they are not.
    wrong = torch.zeros(1, 5, requires_grad=True)
    _, propensity = dla_losses(scores, wrong, theta * relevance)
    assert torch.autograd.grad(propensity, wrong)[0].abs().max() > 1e-2


# --- the list data module ------------------------------------------------------------------

def _join_rows() -> pl.DataFrame:
    """Two requests as the impression-click join gives them, slots out of order: r1 shows
    three items, r2 two."""
    return pl.DataFrame({
        "request_id": ["r1", "r2", "r1", "r1", "r2"],
        "user_id": ["u0", "u1", "u0", "u0", "u1"],
        "ts": [10.0, 20.0, 10.0, 10.0, 20.0],
        "item_id": ["i2", "i7", "i0", "i5", "i3"],
        "position": [2, 2, 1, 3, 1],
        "clicked": [True, False, False, True, True],
    })


def _item_number(frame: pl.DataFrame) -> np.ndarray:
    return frame["item_id"].str.slice(1).cast(pl.Float32).to_numpy()[:, None]


def test_lists_from_the_join_are_in_position_order_and_padded() -> None:
    data = ListDataModule.from_join(_join_rows(), _item_number, examination=THETA)
    batch = data.tensors()
    assert data.list_ids == ["r1", "r2"] and data.n_positions == 3 and data.n_features == 1
    assert batch["features"][..., 0].tolist() == [[0.0, 2.0, 5.0], [3.0, 7.0, 0.0]]
    assert batch["labels"].tolist() == [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]
    assert batch["mask"].tolist() == [[True, True, True], [True, True, False]]
    assert batch["positions"].tolist() == [[1, 2, 3], [1, 2, 0]]
    np.testing.assert_allclose(batch["propensities"].numpy(),
                               [THETA[:3], [THETA[0], THETA[1], 1.0]], rtol=1e-6)
    assert data.data_range == {"first_ts": 10.0, "last_ts": 20.0}
    # Another label column (true relevance, for an oracle), and a depth cut.
    graded = _join_rows().with_columns(grade=pl.Series([3, 0, 1, 4, 2]))
    oracle = ListDataModule.from_join(graded, _item_number, labels="grade", n_positions=2)
    assert oracle.tensors()["labels"].tolist() == [[1.0, 3.0], [2.0, 0.0]]
    assert oracle.tensors()["propensities"].tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_batches_are_gathered_whole_and_reshuffled_each_epoch() -> None:
    n, length = 50, 4
    features = torch.arange(n, dtype=torch.float32)[:, None, None].expand(n, length, 2)
    data = ListDataModule(features, torch.zeros(n, length), batch_size=16, val_fraction=0.2)
    loader = data.train_dataloader()
    first = list(loader)
    assert [len(b["labels"]) for b in first] == [16, 16, 8]
    assert set(first[0]) == {"features", "labels", "mask", "positions", "propensities"}
    assert first[0]["features"].shape == (16, length, 2)
    seen = torch.cat([b["features"][:, 0, 0] for b in first]).long()
    assert len(set(seen.tolist())) == 40  # every training list once
    val = torch.cat([b["features"][:, 0, 0] for b in data.val_dataloader()]).long()
    assert set(val.tolist()).isdisjoint(seen.tolist()) and len(val) == 10
    again = torch.cat([b["features"][:, 0, 0] for b in loader]).long()
    assert sorted(again.tolist()) == sorted(seen.tolist()) and again.tolist() != seen.tolist()


def test_propensities_from_a_curve() -> None:
    positions = np.array([[1, 2, 3], [2, 1, 0]])
    np.testing.assert_allclose(propensities_from_curve([0.8, 0.4, 0.2], positions),
                               [[0.8, 0.4, 0.2], [0.4, 0.8, 1.0]])
    with pytest.raises(ValueError, match=r"positions must be in \[1, 2\]"):
        propensities_from_curve([0.8, 0.4], positions)
    with pytest.raises(ValueError, match="curve must be positive"):
        propensities_from_curve([0.8, 0.0, 0.1], positions)


@pytest.mark.parametrize(("options", "message"), [
    (dict(labels=np.zeros((2, 4))), r"features must be \(N, L, F\) and labels \(N, L\)"),
    (dict(mask=[[True, False, True], [True, True, True]]), "padding must come after"),
    (dict(mask=[[False, False, False], [True, True, True]]), "real first slot"),
    (dict(labels=-np.ones((2, 3))), "labels must be finite and >= 0"),
    (dict(propensities=np.zeros((2, 3))), r"propensities of real slots must be in \(0, 1\]"),
    (dict(propensities=np.ones((2, 3)), examination=THETA), "not both"),
    (dict(examination=THETA[:2]), r"positions must be in \[1, 2\]"),
    (dict(positions=np.zeros((2, 3), dtype=int)), "positions of real slots must be >= 1"),
    (dict(batch_size=0), "batch_size=0"),
    (dict(val_fraction=0.9), "val_fraction=0.9 of 2 lists leaves none to train on"),
])
def test_bad_lists_name_the_problem(options: dict, message: str) -> None:
    arguments = dict(features=np.zeros((2, 3, 1)), labels=np.zeros((2, 3)))
    arguments.update(options)
    with pytest.raises(ValueError, match=message):
        ListDataModule(**arguments)


def test_the_join_must_have_the_label_column() -> None:
    with pytest.raises(ValueError, match="rows have no column 'grade'"):
        ListDataModule.from_join(_join_rows(), _item_number, labels="grade")
    with pytest.raises(ValueError, match=r"expected \(5, F\)"):
        ListDataModule.from_join(_join_rows(), lambda frame: np.zeros((2, 1)))


# --- the models ----------------------------------------------------------------------------

def test_rank_puts_padding_last_and_scores_it_minus_infinity() -> None:
    model = IPSListwise(1, hidden=())
    with torch.no_grad():
        model.scorer.layers[0].weight.fill_(1.0)
        model.scorer.layers[0].bias.zero_()
    features = torch.tensor([[[0.5], [2.0], [9.0], [1.0]]])
    mask = torch.tensor([[True, True, False, True]])
    assert model.rank(features, mask).tolist() == [[1, 3, 0, 2]]
    assert model.rank(features.numpy(), mask.numpy(), k=2).tolist() == [[1, 3]]
    assert model.score(features, mask)[0, 2] == float("-inf")


def test_dla_examination_is_relative_to_position_one() -> None:
    model = DLA(3, n_positions=4)
    np.testing.assert_allclose(model.examination_, np.ones(4))
    with torch.no_grad():
        model.exam_logits.copy_(torch.log(torch.tensor([0.6, 0.3, 0.15, 0.06])))
    np.testing.assert_allclose(model.examination_, [1.0, 0.5, 0.25, 0.1], rtol=1e-6)
    assert RANKERS == {"ips-listwise": IPSListwise, "ips-pairwise": IPSPairwise, "dla": DLA}


def test_initial_weights_follow_the_seed() -> None:
    torch.manual_seed(123)
    first = IPSListwise(4, seed=7).state_dict()
    torch.rand(10)  # whatever else draws from the global generator
    second = IPSListwise(4, seed=7).state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_fit_refuses_data_the_model_cannot_read() -> None:
    data = ListDataModule(np.zeros((4, 3, 2)), np.ones((4, 3)))
    with pytest.raises(ValueError, match="the data has 2 features per slot, the model 5"):
        fit(IPSListwise(5), data)
    with pytest.raises(ValueError, match=r"learns positions 1\.\.2"):
        fit(DLA(2, n_positions=2), data)


def _small_lists() -> ListDataModule:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(64, 5, 3, generator=generator)
    clicks = (torch.rand(64, 5, generator=generator) < 0.3).float()
    return ListDataModule(features, clicks, examination=THETA[:5], batch_size=16)


def test_dla_trains_all_its_epochs_and_the_others_stop_early() -> None:
    """DLA's losses are weighted by moving estimates, so it has nothing to stop on."""
    data = _small_lists()
    assert fit(DLA(3, n_positions=5), data, max_epochs=4, patience=1).current_epoch == 4
    # Noise to fit: the validation loss turns up within a few epochs.
    trainer = fit(IPSListwise(3, hidden=(64,), lr=0.05), data, max_epochs=60, patience=1)
    assert trainer.current_epoch < 60


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here")
def test_training_runs_on_the_gpu_when_there_is_one() -> None:
    data = _small_lists()
    batch = data.tensors()
    for model in (IPSListwise(3), IPSPairwise(3), DLA(3, n_positions=5)):
        trainer = fit(model, data, max_epochs=2)
        assert trainer.strategy.root_device.type == "cuda"
        assert torch.isfinite(model.score(batch["features"], batch["mask"])).all()
        assert model.rank(batch["features"], k=2).shape == (64, 2)
    assert np.isfinite(model.examination_).all()


@pytest.mark.parametrize(("make", "message"), [
    (lambda: IPSListwise(0), "n_features=0"),
    (lambda: IPSListwise(3, lr=0.0), "lr=0.0"),
    (lambda: IPSListwise(3, max_weight=0.5), "max_weight=0.5 must be None or >= 1"),
    (lambda: IPSPairwise(3, form="square"), "form='square'"),
    (lambda: DLA(3, n_positions=0), "n_positions=0"),
])
def test_bad_hyper_parameters_name_the_field_and_the_value(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


# --- simulated log with known relevance and examination ------------------------------------

N_LISTS = 40_000


@dataclass
class Trained:
    ndcg: dict[str, float]
    per_context: dict[str, np.ndarray]
    dla: DLA


@pytest.fixture(scope="module")
def trained() -> Trained:
    """One log for every ranker: 40k production slates of 10 clicked by a position-based
    model at eta = 1 (:class:`simulation.ltr.RankingExperiment`), and 2000 held-out
    contexts of 50 candidates judged by their true grades."""
    experiment = RankingExperiment(eta=1.0)
    assert np.allclose(experiment.examination, THETA)
    rows = experiment.rows(experiment.log(N_LISTS))
    clicks = experiment.lists(rows, examination=THETA)
    truth = experiment.lists(rows, labels="grade")
    n = clicks.n_features
    models = {"oracle": (IPSListwise(n, ips=False), truth),
              "naive": (IPSListwise(n, ips=False), clicks),
              "ips": (IPSListwise(n), clicks),
              "ips-pairwise": (IPSPairwise(n), clicks),
              "dla": (DLA(n, n_positions=10, exam_lr=3e-2), clicks)}
    judged = experiment.train_and_judge(models, experiment.held_out())
    ndcg = {name: judgement.mean for name, judgement in judged.items()}
    per_context = {name: judgement.per_context for name, judgement in judged.items()}
    dla = models["dla"][0]
    assert isinstance(dla, DLA)
    return Trained(ndcg, per_context, dla)


def test_ips_rankers_match_the_oracle_and_the_naive_ranker_does_not(
        trained: Trained, record_property: pytest.RecordProperty) -> None:
    """True nDCG@10 on held-out contexts. Measured: oracle .9615, IPS listwise .9595
    (0.2% below), IPS pairwise .9603, DLA .9583, naive .9286 (3.4% below the oracle), the
    naive ranker below IPS by 38 standard errors in a paired comparison over the 2000
    contexts. Bounds: IPS (and DLA) within 3% of the oracle, naive at least 2% below it."""
    ndcg = trained.ndcg
    for name, value in ndcg.items():
        record_property(f"ndcg@10 {name}", round(float(value), 4))
    diff = trained.per_context["ips"] - trained.per_context["naive"]
    z = diff.mean() / (diff.std(ddof=1) / np.sqrt(len(diff)))
    record_property("paired z, ips - naive", round(float(z), 1))
    summary = ", ".join(f"{name} {value:.4f}" for name, value in ndcg.items())
    for name in ("ips", "ips-pairwise", "dla"):
        assert ndcg[name] >= 0.97 * ndcg["oracle"], summary
    assert ndcg["naive"] <= 0.98 * ndcg["oracle"], summary
    assert z > 5, f"paired z = {z:.1f}; {summary}"


def test_dla_recovers_the_examination_curve(
        trained: Trained, record_property: pytest.RecordProperty) -> None:
    """Learned jointly with the ranker from the clicks alone. Measured: 1, .880, .698,
    .492, .408 against the simulator's 1, .897, .706, .500, .412 (at most 1.9% off); the
    bound is 10% per position."""
    curve = trained.dla.examination_
    record_property("dla examination top 5", [round(float(v), 3) for v in curve[:TOP]])
    record_property("true examination top 5", [round(float(v), 3) for v in TRUE[:TOP]])
    assert curve.shape == (10,) and curve[0] == 1
    error = np.abs(curve[:TOP] / TRUE[:TOP] - 1)
    assert np.all(error <= 0.10), (curve[:TOP].round(3), TRUE[:TOP].round(3))

"""Slate exploration: the logged propensities are the exact probabilities of what is shown
(against brute-force enumeration and against the samplers' own frequencies), padding, the
pipeline's Reranker contract, and position-based click weights."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from bandits.slates import EpsilonMixture, PlackettLuce, click_weights, plackett_luce_marginals
from ranking.index import VectorIndex
from ranking.pipeline import Candidates, Pipeline, Request

SCORES = torch.tensor([0.3, 1.2, -0.5, 0.8, 0.0, 2.0, -1.1, 0.6], dtype=torch.float64)


def brute_force(weights: Sequence[float], k: int) -> np.ndarray:
    """P(item at slot) by summing the probability of every ordered k-subset."""
    n, total = len(weights), float(sum(weights))
    out = np.zeros((k, n))
    for ranking in itertools.permutations(range(n), k):
        p, left = 1.0, total
        for item in ranking:
            p *= weights[item] / left
            left -= weights[item]
        out[np.arange(k), list(ranking)] += p
    return out


def test_plackett_luce_marginals_equal_brute_force() -> None:
    weights = torch.softmax(SCORES[:6] / 0.7, 0)
    table = plackett_luce_marginals(weights[None], 4)[0].numpy()
    assert np.abs(table - brute_force(weights.tolist(), 4)).max() < 1e-12
    # through the sampler, with a padded row of 4 real candidates beside it
    mask = torch.tensor([[True] * 6, [True, False, True, True, False, True]])
    got = PlackettLuce(0.7).marginals(SCORES[:6].expand(2, 6), 4, mask=mask).numpy()
    assert np.abs(got[0] - brute_force(weights.tolist(), 4)).max() < 1e-12
    kept = [0, 2, 3, 5]
    sub = torch.softmax(SCORES[kept] / 0.7, 0).tolist()
    assert np.abs(got[1][:, kept] - brute_force(sub, 4)).max() < 1e-12
    assert np.all(got[1][:, [1, 4]] == 0)


@pytest.mark.parametrize("sampler, n", [(PlackettLuce(0.8), 8), (EpsilonMixture(0.3), 6),
                                        (EpsilonMixture(0.3), 10)])
def test_logged_propensities_match_empirical_slot_frequencies(sampler, n: int) -> None:
    """Issue #14's must-show. 200k slates of k = 3 from one score vector: every (item, slot)
    frequency is within 4 binomial standard deviations, sqrt(p (1 - p) / 200k), of the
    marginal probability, and every logged propensity is that marginal (to 1e-12)."""
    draws, k = 200_000, 3
    scores = torch.linspace(-1.0, 1.5, n, dtype=torch.float64)[torch.randperm(
        n, generator=torch.Generator().manual_seed(n))]
    table = sampler.marginals(scores[None], k)[0]  # (k, n)
    assert torch.allclose(table.sum(dim=1), torch.ones(k, dtype=torch.float64), atol=1e-12)
    positions, propensity = sampler.sample(scores.expand(draws, n), k,
                                           generator=torch.Generator().manual_seed(7))
    assert positions.shape == (draws, k) and positions.dtype == torch.int64
    assert propensity.dtype == torch.float64
    slot = torch.arange(k).expand(draws, k)
    # exact up to the rounding of batched sums (1e-12 relative)
    assert torch.allclose(propensity, table[slot, positions], rtol=1e-12, atol=0)
    counts = torch.bincount((slot * n + positions).flatten(), minlength=k * n)
    freq = counts.reshape(k, n).to(torch.float64) / draws
    bound = 4 * torch.sqrt(table * (1 - table) / draws)
    assert torch.all((freq - table).abs() <= bound), (freq - table).abs().max()
    # no item is shown twice in one slate
    assert torch.all(positions.sort(dim=1).values.diff(dim=1) > 0)


@pytest.mark.parametrize("sampler", [PlackettLuce(0.5), EpsilonMixture(0.25)])
def test_prefix_propensities_are_a_distribution_over_rankings(sampler) -> None:
    """The probability of every full ranking of k = 3 among 5: they sum to 1, slot 1's is
    the marginal, and Plackett-Luce's is the product of its sequential choices."""
    n, k = 5, 3
    rankings = torch.tensor(list(itertools.permutations(range(n), k)))
    scores = SCORES[:n].expand(len(rankings), n)
    prefix = sampler.prefix_propensity(scores, rankings)
    assert abs(float(prefix[:, -1].sum()) - 1.0) < 1e-12
    first = sampler.marginals(SCORES[None, :n], k)[0, 0]
    assert torch.allclose(prefix[:, 0], first[rankings[:, 0]], atol=1e-15)
    assert torch.all(prefix.diff(dim=1) <= 1e-15)  # a longer prefix is never more likely
    if isinstance(sampler, PlackettLuce):
        w = torch.softmax(SCORES[:n] / 0.5, 0)
        a, b, c = rankings.T
        expect = w[a] * w[b] / (1 - w[a]) * w[c] / (1 - w[a] - w[b])
        assert torch.allclose(prefix[:, 2], expect, rtol=1e-12)


def test_epsilon_mixture_closed_form_and_ties() -> None:
    scores = torch.tensor([[0.5, 2.0, 2.0, -1.0, 0.0]], dtype=torch.float64)
    table = EpsilonMixture(0.2).marginals(scores, 3)[0]
    expect = torch.full((3, 5), 0.2 / 5, dtype=torch.float64)
    expect[[0, 1, 2], [1, 2, 0]] += 0.8  # ties keep candidate order: 1 before 2
    assert torch.allclose(table, expect, atol=1e-15)
    positions, propensity = EpsilonMixture(0.0).sample(scores.expand(4, 5), 3)
    assert positions.tolist() == [[1, 2, 0]] * 4 and torch.all(propensity == 1.0)


def test_padding_rows_with_fewer_candidates_than_k() -> None:
    scores = SCORES[:5].expand(3, 5).clone()
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [False] * 5])
    for sampler in (PlackettLuce(1.0), EpsilonMixture(0.5)):
        positions, propensity = sampler.sample(scores, 3, mask=mask,
                                               generator=torch.Generator().manual_seed(1))
        assert torch.all(positions[0] >= 0)
        assert set(positions[1, :2].tolist()) == {0, 1} and positions[1, 2] == -1
        assert torch.all(positions[2] == -1) and torch.isnan(propensity[2]).all()
        assert torch.isnan(propensity[1, 2]) and torch.all(propensity[1, :2] > 0)
        # two real candidates: each slot holds one of the two, so the pair sums to 1
        table = sampler.marginals(scores, 3, mask=mask)
        assert torch.allclose(table[1, :2].sum(dim=1), torch.ones(2, dtype=torch.float64))
        assert torch.all(table[1, 2] == 0) and torch.all(table[2] == 0)


def test_shortlist_explores_only_the_best() -> None:
    sampler = PlackettLuce(1.0, shortlist=4)
    best = torch.argsort(SCORES, descending=True)[:4]
    positions, propensity = sampler.sample(SCORES.expand(5000, 8), 3,
                                           generator=torch.Generator().manual_seed(3))
    assert set(positions.unique().tolist()) <= set(best.tolist())
    table = sampler.marginals(SCORES[None], 3)[0]
    sub = brute_force(torch.softmax(SCORES[best], 0).tolist(), 3)
    assert np.abs(table[:, best].numpy() - sub).max() < 1e-12
    outside = torch.ones(8, dtype=torch.bool)
    outside[best] = False
    assert torch.all(table[:, outside] == 0)
    slot = torch.arange(3).expand(5000, 3)
    assert torch.allclose(propensity, table[slot, positions], rtol=1e-12, atol=0)


def test_generator_seeds_the_draw() -> None:
    for sampler in (PlackettLuce(1.0), EpsilonMixture(0.5)):
        draws = [sampler.sample(SCORES.expand(50, 8), 3,
                                generator=torch.Generator().manual_seed(seed))[0]
                 for seed in (11, 11, 12)]
        assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


def test_exact_cost_is_bounded_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"k=5 over 100 candidates needs 3921225 subsets.*"
                                         r"set shortlist"):
        PlackettLuce(1.0).sample(torch.zeros(2, 100), 5)
    positions, _ = PlackettLuce(1.0, shortlist=10).sample(torch.zeros(2, 100), 5)
    assert positions.shape == (2, 5)


@pytest.mark.parametrize("make, message", [
    (lambda: PlackettLuce(0.0), "temperature=0.0 must be a finite number > 0"),
    (lambda: PlackettLuce(1.0, shortlist=0), "shortlist=0 must be an integer >= 1"),
    (lambda: EpsilonMixture(1.5), r"epsilon=1.5 must be a number in \[0, 1\]"),
    (lambda: PlackettLuce(1.0).sample(torch.tensor([[0.0, math.nan]]), 1),
     r"scores\[0, 1\]=nan must be finite for a real candidate"),
    (lambda: EpsilonMixture(0.1).sample(torch.zeros(2, 3), 0), "k=0 must be an integer >= 1"),
])
def test_bad_inputs_name_the_field(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_click_weights() -> None:
    curve = torch.tensor([1.0, 0.5, 0.25])
    weights = click_weights(torch.tensor([[1, 2, 3], [3, 0, 2]]), curve)
    assert weights.tolist() == [[1.0, 2.0, 4.0], [4.0, 0.0, 2.0]]
    assert weights.dtype == torch.float64
    assert click_weights(np.array([3, 2]), curve, max_weight=3.0).tolist() == [3.0, 2.0]
    with pytest.raises(ValueError, match=r"positions value 4 must be in \[1, 3\]"):
        click_weights(torch.tensor([4]), curve)
    with pytest.raises(ValueError, match=r"examination\[1\]=0.0 must be in \(0, 1\]"):
        click_weights(torch.tensor([1]), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="positions dtype=torch.float32 must be an integer"):
        click_weights(torch.tensor([1.0]), curve)


# -- the pipeline's last step -------------------------------------------------------------------

DIM, N_ITEMS = 8, 40


class TableEncoder:
    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.name, self.table, self.dim = "toy", table, DIM

    def encode(self, keys: Sequence[str]) -> np.ndarray:
        return np.stack([self.table[key] for key in keys])


class PartialScorer:
    """Scores by the item number / 10; NaN for the items in ``unknown`` (never seen)."""

    name = "partial"

    def __init__(self, unknown: frozenset[str]) -> None:
        self.unknown = unknown

    def score(self, candidates: Candidates) -> np.ndarray:
        out = np.full(candidates.shape, np.nan)
        for (b, n), item in np.ndenumerate(candidates.item_ids):
            if item is not None and item not in self.unknown:
                out[b, n] = int(item.split("-")[1]) / 10
        return out


@pytest.fixture(scope="module")
def index() -> tuple[VectorIndex, np.ndarray]:
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    built = VectorIndex(DIM, model="toy")
    built.add([f"item-{i}" for i in range(N_ITEMS)], vectors)
    return built, vectors


@pytest.mark.parametrize("reranker", [PlackettLuce(0.3), EpsilonMixture(0.4)])
def test_pipeline_logs_the_exact_slot_probabilities(index, reranker) -> None:
    """4000 copies of one request through the pipeline with the sampler as its last step:
    each shown item's logged propensity is the sampler's marginal for that slot, and the
    top slot's frequencies are within 4 binomial standard deviations of it."""
    built, vectors = index
    pipeline = Pipeline(built, query_encoder=TableEncoder({"q": vectors[3]}), retrieve=8,
                        reranker=reranker, seed=4)
    copies = 4000
    ranked = pipeline.run([Request(query="q")] * copies, k=3)
    candidates = pipeline.candidates([Request(query="q")])
    table = reranker.marginals(candidates.retrieval_scores.astype(np.float64), 3)[0].numpy()
    column = {item: n for n, item in enumerate(candidates.item_ids[0])}
    top = np.zeros(8)
    for row in ranked:
        assert len(row) == 3 and len({r.item_id for r in row}) == 3
        for r in row:
            assert r.propensity == pytest.approx(table[r.position - 1, column[r.item_id]],
                                                 rel=1e-12)
        top[column[row[0].item_id]] += 1
    freq = top / copies
    assert np.all(np.abs(freq - table[0]) <= 4 * np.sqrt(table[0] * (1 - table[0]) / copies))


def test_pipeline_explores_unscored_items_with_the_row_floor(index) -> None:
    built, vectors = index
    unknown = frozenset(f"item-{i}" for i in range(0, N_ITEMS, 2))
    pipeline = Pipeline(built, query_encoder=TableEncoder({"q": vectors[3]}), retrieve=8,
                        scorer=PartialScorer(unknown), reranker=PlackettLuce(1.0), seed=2)
    candidates = pipeline.candidates([Request(query="q")])
    scores = pipeline.scores(candidates)
    real = candidates.mask[0]
    assert np.isnan(scores[0][real]).any() and not np.isnan(scores[0][real]).all()
    floor = np.nanmin(scores[0])
    table = PlackettLuce(1.0).marginals(np.where(np.isnan(scores), floor, scores), 3)[0]
    ranked = pipeline.run([Request(query="q")] * 2000, k=3)
    shown_unknown = [r for row in ranked for r in row if r.item_id in unknown]
    assert shown_unknown  # a cold item is shown now and then ...
    column = {item: n for n, item in enumerate(candidates.item_ids[0])}
    for r in shown_unknown:  # ... with the probability that was computed for it
        assert r.propensity == pytest.approx(float(table[r.position - 1,
                                                         column[r.item_id]]), rel=1e-12)


def test_a_shortlist_shorter_than_the_slate_is_refused() -> None:
    from bandits.slates import PlackettLuce

    with pytest.raises(ValueError, match="shortlist=2 must be >= k=3"):
        PlackettLuce(shortlist=2).sample(torch.zeros((1, 6)), 3)

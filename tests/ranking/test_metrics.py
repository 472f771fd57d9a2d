from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, dcg_score, ndcg_score

from ranking.metrics import (
    average_precision_at_k,
    dcg_at_k,
    ips_dcg_at_k,
    ips_recall_at_k,
    mean_over_users,
    ndcg_at_k,
    recall_at_k,
    reciprocal_rank_at_k,
)
from simulation.clicks import PositionBasedModel, attractiveness, examination
from simulation.policies import noisy_oracle_policy
from simulation.simulator import simulate
from simulation.world import World

# log2(3), log2(5), log2(6): the discounts of ranks 2, 4 and 5.
L3, L5, L6 = np.log2(3), np.log2(5), np.log2(6)

# Row 0: relevant at ranks 2, 4, 5, and one more relevant item the list missed (4 in all).
# Row 1: relevant at rank 1 only, 1 in all. Row 2: nothing relevant.
BINARY = np.array([[0, 1, 0, 1, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
N_RELEVANT = np.array([4, 1, 0])


def test_binary_metrics_by_hand() -> None:
    # DCG@5 row 0 = 1/log2 3 + 1/log2 5 + 1/log2 6 = 0.6309 + 0.4307 + 0.3869 = 1.4485.
    assert dcg_at_k(BINARY, 5) == pytest.approx([1 / L3 + 1 / L5 + 1 / L6, 1, 0])
    assert dcg_at_k(BINARY, 3) == pytest.approx([1 / L3, 1, 0])
    # Ideal of row 0 from its own row: 1 + 1/log2 3 + 1/2 = 2.1309, so nDCG@5 = 0.6797.
    assert ndcg_at_k(BINARY, k=5) == pytest.approx(
        [(1 / L3 + 1 / L5 + 1 / L6) / (1 + 1 / L3 + 0.5), 1, 0])
    assert recall_at_k(BINARY, N_RELEVANT, k=3) == pytest.approx([1 / 4, 1, 0])
    assert recall_at_k(BINARY, N_RELEVANT, k=5) == pytest.approx([3 / 4, 1, 0])
    # Without n_relevant the list's own count (3 in row 0) is the denominator.
    assert recall_at_k(BINARY, k=3) == pytest.approx([1 / 3, 1, 0])
    # AP@5 row 0: precisions 1/2, 2/4, 3/5 at the relevant ranks, sum 1.6, over min(4, 5).
    assert average_precision_at_k(BINARY, N_RELEVANT, k=5) == pytest.approx([0.4, 1, 0])
    # AP@3 row 0: precision 1/2 at rank 2, over min(4, 3) = 3.
    assert average_precision_at_k(BINARY, N_RELEVANT, k=3) == pytest.approx([1 / 6, 1, 0])
    assert reciprocal_rank_at_k(BINARY) == pytest.approx([0.5, 1, 0])
    assert reciprocal_rank_at_k(BINARY, k=1) == pytest.approx([0, 1, 0])
    assert reciprocal_rank_at_k(BINARY.astype(bool), k=2) == pytest.approx([0.5, 1, 0])


def test_graded_dcg_linear_and_exponential_gain_and_ndcg_with_a_separate_ideal() -> None:
    graded = np.array([[3, 0, 2]])
    # Linear: 3 + 0 + 2/log2 4 = 4. Exponential: 7 + 0 + 3/2 = 8.5.
    assert dcg_at_k(graded) == pytest.approx([4.0])
    assert dcg_at_k(graded, gain="exponential") == pytest.approx([8.5])
    # Ideal [3, 2, 0]: 3 + 2/log2 3 = 4.2619, so nDCG = 4 / 4.2619 = 0.9386.
    assert ndcg_at_k(graded) == pytest.approx([4 / (3 + 2 / L3)])
    # The list [1, 3] is the top 2 shown out of a pool graded [3, 2, 1, 0]:
    # DCG@2 = 1 + 3/log2 3 = 2.8928, ideal DCG@2 = 3 + 2/log2 3 = 4.2619, nDCG@2 = 0.6788.
    ndcg = ndcg_at_k(np.array([[1, 3]]), np.array([[0, 1, 3, 2]]), k=2)
    assert ndcg == pytest.approx([(1 + 3 / L3) / (3 + 2 / L3)])
    # Graded labels count as relevant where > 0 for recall, AP and RR.
    assert recall_at_k(graded) == pytest.approx([1.0])
    assert reciprocal_rank_at_k(np.array([[0, 0, 4]])) == pytest.approx([1 / 3])
    with pytest.raises(ValueError, match="gain='log'"):
        dcg_at_k(graded, gain="log")


@pytest.mark.parametrize("k", [1, 5, 10, None])
def test_dcg_and_ndcg_agree_with_scikit_learn_on_random_graded_lists(k: int | None) -> None:
    """scikit-learn scores unordered items: it ranks them by score, averages the gains of
    tied scores (unless ignore_ties), and uses gain = relevance and 1/log2(rank + 1), the
    ideal being the same row sorted. Continuous scores have no ties, so its order is
    argsort(-score), the order we pass. Rows with nothing relevant score 0 in both."""
    rng = np.random.default_rng(0)
    grades = rng.integers(0, 5, size=(300, 20)).astype(np.float64)
    grades[:10] = 0
    scores = rng.normal(size=grades.shape)
    ranked = np.take_along_axis(grades, np.argsort(-scores, axis=1), axis=1)
    ours_dcg, ours_ndcg = dcg_at_k(ranked, k), ndcg_at_k(ranked, k=k)
    assert ours_ndcg[:10].tolist() == [0.0] * 10
    for row in range(0, 300, 7):
        one = (grades[row:row + 1], scores[row:row + 1])
        assert ours_dcg[row] == pytest.approx(dcg_score(*one, k=k), rel=1e-12)
        assert ours_ndcg[row] == pytest.approx(ndcg_score(*one, k=k), rel=1e-12, abs=1e-15)
    assert ours_ndcg.mean() == pytest.approx(ndcg_score(grades, scores, k=k), rel=1e-12)


def test_average_precision_without_a_cutoff_is_scikit_learns() -> None:
    rng = np.random.default_rng(1)
    relevant = rng.random((50, 15)) < 0.3
    relevant[:, 0] = True  # scikit-learn needs a positive in every row
    scores = rng.normal(size=relevant.shape)
    ranked = np.take_along_axis(relevant, np.argsort(-scores, axis=1), axis=1)
    expected = [average_precision_score(relevant[u], scores[u]) for u in range(50)]
    assert average_precision_at_k(ranked) == pytest.approx(expected, rel=1e-12)


def test_ragged_lists_padded_with_nan_score_as_their_unpadded_selves() -> None:
    rng = np.random.default_rng(2)
    lists = [rng.integers(0, 4, size=length).astype(float) for length in (7, 1, 4, 0, 7)]
    padded = np.full((len(lists), 7), np.nan)
    for row, values in enumerate(lists):
        padded[row, :len(values)] = values
    n_relevant = np.array([(v > 0).sum() for v in lists]) + 1
    for k in (1, 3, None):
        per_list = {
            "dcg": [dcg_at_k(v[None], k)[0] for v in lists],
            "ndcg": [ndcg_at_k(v[None], k=k)[0] for v in lists],
            "recall": [recall_at_k(v[None], n_relevant[i:i + 1], k)[0]
                       for i, v in enumerate(lists)],
            "ap": [average_precision_at_k(v[None], n_relevant[i:i + 1], k)[0]
                   for i, v in enumerate(lists)],
            "rr": [reciprocal_rank_at_k(v[None], k)[0] for v in lists],
        }
        assert dcg_at_k(padded, k) == pytest.approx(per_list["dcg"])
        assert ndcg_at_k(padded, k=k) == pytest.approx(per_list["ndcg"])
        assert recall_at_k(padded, n_relevant, k) == pytest.approx(per_list["recall"])
        assert average_precision_at_k(padded, n_relevant, k) == pytest.approx(per_list["ap"])
        assert reciprocal_rank_at_k(padded, k) == pytest.approx(per_list["rr"])
    # A NaN-padded ideal pool of a different length than the list is fine too.
    ideal = np.array([[3.0, 1.0, np.nan], [2.0, np.nan, np.nan]])
    assert ndcg_at_k(np.array([[1.0], [2.0]]), ideal, k=1) == pytest.approx([1 / 3, 1.0])
    with pytest.raises(ValueError, match=r"relevance\[0, 1\] is NaN before a real entry"):
        dcg_at_k(np.array([[1.0, np.nan, 2.0]]))


def test_users_without_a_positive_score_zero_and_mean_over_users_skips_them() -> None:
    values = recall_at_k(BINARY, N_RELEVANT, k=5)  # [0.75, 1, 0]; user 2 has no positive
    assert values[2] == 0.0
    assert mean_over_users(values, N_RELEVANT) == pytest.approx((0.75 + 1) / 2)
    assert mean_over_users(values, N_RELEVANT > 0) == pytest.approx(0.875)
    assert values.mean() == pytest.approx(1.75 / 3)  # what skipping avoids
    assert np.isnan(mean_over_users(np.zeros(3), np.zeros(3)))
    with pytest.raises(ValueError, match="same shape"):
        mean_over_users(values, N_RELEVANT[:2])


def test_bad_inputs_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="k=0 must be a positive integer"):
        dcg_at_k(BINARY, 0)
    with pytest.raises(ValueError, match=r"relevance\[0, 0\]=-1.0 must be finite and >= 0"):
        dcg_at_k(np.array([[-1, 2]]))
    with pytest.raises(TypeError, match="pass the cutoff as k="):
        ndcg_at_k(BINARY, 5)
    with pytest.raises(ValueError, match=r"n_relevant\[0\]=2 is below the 3 relevant"):
        recall_at_k(BINARY, np.array([2, 1, 0]))
    with pytest.raises(ValueError, match="one row per ranked list"):
        ndcg_at_k(BINARY, BINARY[:2])


def test_a_cpu_torch_tensor_is_taken_like_an_array() -> None:
    torch = pytest.importorskip("torch")
    assert dcg_at_k(torch.tensor(BINARY), 5) == pytest.approx(dcg_at_k(BINARY, 5))


def test_ips_estimates_by_hand() -> None:
    # Two queries in shuffled row order; "b" has no click and estimates 0.
    query = np.array(["a", "b", "a", "a", "b"])
    rank = np.array([1, 1, 3, 2, 2])
    clicked = np.array([True, False, True, False, False])
    propensity = np.array([0.5, 0.9, 0.25, 0.4, np.nan])  # unclicked rows are not read
    # Query a: clicks at ranks 1 and 3: 1/(log2 2 * 0.5) + 1/(log2 4 * 0.25) = 2 + 2 = 4.
    assert ips_dcg_at_k(query, rank, clicked, propensity) == pytest.approx([4.0, 0.0])
    assert ips_dcg_at_k(query, rank, clicked, propensity, k=2) == pytest.approx([2.0, 0.0])
    # Clipped at 0.5 the rank-3 click weighs 2, not 4: 2 + 1/(2 * 0.5) = 3.
    assert ips_dcg_at_k(query, rank, clicked, propensity, clip=0.5) == pytest.approx([3, 0])
    # Propensity 1 is the naive estimate: 1 + 1/2.
    assert ips_dcg_at_k(query, rank, clicked, np.ones(5)) == pytest.approx([1.5, 0.0])
    # A ranking that leaves the rank-3 item out counts only the other click.
    unranked = np.where(rank == 3, np.nan, rank)
    assert ips_dcg_at_k(query, unranked, clicked, propensity) == pytest.approx([2.0, 0.0])
    # Recall@2 of query a: weight 2 in the top 2 out of 2 + 4.
    assert ips_recall_at_k(query, rank, clicked, propensity, k=2) == pytest.approx([1 / 3, 0])
    with pytest.raises(ValueError, match=r"propensity\[2\]=0.0 of a clicked row"):
        ips_dcg_at_k(query, rank, clicked, np.array([0.5, 0.9, 0.0, 0.4, 1.0]))
    with pytest.raises(ValueError, match=r"rank\[0\]=0.0 must be >= 1"):
        ips_dcg_at_k(query, rank - 1, clicked, propensity)
    with pytest.raises(ValueError, match="same length"):
        ips_dcg_at_k(query, rank[:4], clicked, propensity)


def test_ips_dcg_on_a_simulated_log_is_unbiased_and_the_naive_estimate_is_not() -> None:
    """Position-based clicks (eta = 1, ULTR examination), known relevance. For the logged
    ranking and for its reverse (an off-policy ranking: the bottom slots, examined with
    probability 0.06 to 0.11, come first), the mean IPS DCG estimate over 200k impressions
    lands within 4 standard errors and 2% of the true mean DCG; the naive click estimate is
    below half of it. Relevance here is what a click reveals, P(click | examined, grade)."""
    world = World(n_items=2000, n_users=1000, seed=0)
    theta = examination(10, eta=1.0)
    noise_floor = 0.1
    log = simulate(world, noisy_oracle_policy(world, 1.0),
                   PositionBasedModel(theta, noise_floor=noise_floor), n=200_000, k=10, seed=3)
    n, k = log.clicks.shape
    relevance = attractiveness(log.grades, noise_floor).astype(np.float64)
    query = np.repeat(np.arange(n), k)
    position = np.tile(np.arange(1, k + 1), n)
    clicked = log.clicks.ravel()
    examined = theta[position - 1]
    for rank, order, cutoff in ((position, slice(None), 10),
                                (k + 1 - position, slice(None, None, -1), 5)):
        truth = dcg_at_k(relevance[:, order], cutoff)
        ips = ips_dcg_at_k(query, rank, clicked, examined, cutoff)
        naive = ips_dcg_at_k(query, rank, clicked, np.ones(n * k), cutoff)
        standard_error = (ips - truth).std() / np.sqrt(n)
        assert abs(ips.mean() - truth.mean()) < 4 * standard_error
        assert ips.mean() == pytest.approx(truth.mean(), rel=0.02)
        assert naive.mean() < 0.5 * truth.mean()
    # Clipping at 0.1 caps the bottom slots' weights: the reversed ranking is underestimated.
    clipped = ips_dcg_at_k(query, rank, clicked, examined, cutoff, clip=0.1)
    assert clipped.mean() < truth.mean() - 4 * standard_error

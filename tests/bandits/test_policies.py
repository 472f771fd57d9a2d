"""The linear bandit policies against their formulas, their updates against fresh solves,
their propensities against sampled frequencies, and LinUCB against baselines on the
simulator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from bandits.policies import (
    CrossFeatures,
    DiagLinUCB,
    EpsilonGreedy,
    FeaturePolicy,
    HybridLinUCB,
    LinearThompsonSampling,
    LinUCB,
    Softmax,
)
from simulation.clicks import attractiveness
from simulation.world import World

F64 = torch.float64
Z = 4.5  # tolerance in binomial standard errors, wide enough for the many cells tested


pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: see tests/conftest.py


def _stream(n: int, d: int, seed: int, n_arms: int = 1, scale: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    if scale is not None:
        x = x * scale
    truth = torch.randn(d, generator=g, dtype=F64)
    reward = x @ truth + torch.randn(n, generator=g, dtype=F64)
    weight = 2 * torch.rand(n, generator=g, dtype=F64)
    arm = torch.randint(0, n_arms, (n,), generator=g)
    return x, reward, weight, arm


def _ridge(x: torch.Tensor, reward: torch.Tensor, weight: torch.Tensor, ridge: float
           ) -> tuple[torch.Tensor, torch.Tensor]:
    A = ridge * torch.eye(x.shape[1], dtype=F64) + x.T @ (weight[:, None] * x)
    return A, torch.linalg.solve(A, x.T @ (weight * reward))


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_linucb_disjoint_is_ridge_per_arm_plus_alpha_widths() -> None:
    x, reward, weight, arm = _stream(600, 4, seed=1, n_arms=3)
    policy = LinUCB(4, n_arms=3, alpha=0.7, ridge=2.0)
    for rows in torch.split(torch.arange(600), 50):  # a mix of Woodbury and refactor steps
        policy.partial_fit(x[rows], reward[rows], weight[rows], arm[rows])
    probe = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    probe_arm = torch.tensor([[0, 1, 2, 0, 1], [2, 2, 1, 0, 0]])
    scores = policy.score(probe, probe_arm)
    for a in range(3):
        A, theta = _ridge(x[arm == a], reward[arm == a], weight[arm == a], 2.0)
        assert _relative(policy.theta_[a], theta) < 1e-10
        mask = probe_arm == a
        p = probe[mask]
        expected = p @ theta + 0.7 * torch.sqrt(((p @ torch.linalg.inv(A)) * p).sum(-1))
        assert torch.allclose(scores[mask], expected, rtol=1e-10, atol=1e-12)
    chosen, propensity = policy.select(probe, 2, arm=probe_arm)
    assert torch.equal(chosen, torch.argsort(scores, dim=1, descending=True)[:, :2])
    assert torch.equal(propensity, torch.ones(2, 2, dtype=F64))


def test_a_million_updates_stay_within_1e6_of_a_fresh_solve() -> None:
    """1,000,000 weighted rows in batches of 10,000 over 5,000 arms (d=8), so almost every
    arm's inverse follows Woodbury updates, with features spread over four decades
    (condition numbers near 1e8): the maintained inverse and theta stay within 1e-6
    relative of a fresh solve thanks to the refactorization every 50 updates."""
    scale = torch.logspace(-2, 2, 8, dtype=F64)
    policy = LinUCB(8, n_arms=5000, ridge=1e-3, refactor_every=50)
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(8, generator=g, dtype=F64)
    for _ in range(100):
        x = torch.randn(10_000, 8, generator=g, dtype=F64) * scale
        reward = x @ truth + torch.randn(10_000, generator=g, dtype=F64)
        weight = 2 * torch.rand(10_000, generator=g, dtype=F64)
        policy.partial_fit(x, reward, weight, torch.randint(0, 5000, (10_000,), generator=g))
    assert policy.n_updates_ == 1_000_000
    # Refactorizations did happen, and Woodbury steps too (counters between them).
    assert int(policy.since_refactor_.max()) > 10
    fresh_inverse = torch.linalg.inv(policy.A_)
    fresh_theta = torch.linalg.solve(policy.A_, policy.b_.unsqueeze(-1)).squeeze(-1)
    inverse_error = (policy.A_inv_ - fresh_inverse).norm(dim=(1, 2)) \
        / fresh_inverse.norm(dim=(1, 2))
    theta_error = (policy.theta_ - fresh_theta).norm(dim=1) / fresh_theta.norm(dim=1)
    assert float(inverse_error.max()) < 1e-6
    assert float(theta_error.max()) < 1e-6


def test_shared_model_woodbury_steps_match_a_fresh_solve() -> None:
    # Batches of 3 rows < d = 6: every step but the refactorizations is a Woodbury update.
    x, reward, weight, _ = _stream(6000, 6, seed=3)
    policy = EpsilonGreedy(6, ridge=0.5, refactor_every=200)
    for rows in torch.split(torch.arange(6000), 3):
        policy.partial_fit(x[rows], reward[rows], weight[rows])
    A, theta = _ridge(x, reward, weight, 0.5)
    assert _relative(policy.A_, A) < 1e-12
    assert _relative(policy.A_inv_, torch.linalg.inv(A)) < 1e-9
    assert _relative(policy.theta_[0], theta) < 1e-9


def test_an_importance_weight_of_two_counts_a_row_twice() -> None:
    x, reward, _, _ = _stream(40, 3, seed=4)
    weighted = LinUCB(3).partial_fit(x, reward, torch.full((40,), 2.0, dtype=F64))
    twice = LinUCB(3).partial_fit(torch.cat([x, x]), torch.cat([reward, reward]))
    assert torch.allclose(weighted.A_, twice.A_, rtol=1e-12)
    assert torch.allclose(weighted.theta_, twice.theta_, rtol=1e-10)


def test_hybrid_linucb_is_the_joint_ridge_regression() -> None:
    """Li et al.'s hybrid model is ridge regression on [z, x in the arm's block]: its beta,
    theta and the variance s must equal that joint solve."""
    k, d, arms = 2, 3, 3
    g = torch.Generator().manual_seed(5)
    n = 300
    x = torch.randn(n, k + d, generator=g, dtype=F64)
    arm = torch.randint(0, arms, (n,), generator=g)
    reward = x.sum(1) + torch.randn(n, generator=g, dtype=F64)
    weight = torch.rand(n, generator=g, dtype=F64) + 0.5
    policy = HybridLinUCB(k, d, arms, alpha=0.9, ridge=1.5, refactor_every=7)
    for rows in torch.split(torch.arange(n), 20):
        policy.partial_fit(x[rows], reward[rows], weight[rows], arm[rows])

    def joint(rows: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        full = torch.zeros(len(rows), k + arms * d, dtype=F64)
        full[:, :k] = rows[:, :k]
        for j in range(arms):
            full[a == j, k + j * d:k + (j + 1) * d] = rows[a == j, k:]
        return full

    A, solution = _ridge(joint(x, arm), reward, weight, 1.5)
    assert _relative(policy.beta_, solution[:k]) < 1e-9
    assert _relative(policy.theta_, solution[k:].reshape(arms, d)) < 1e-9
    probe = torch.randn(4, 3, k + d, generator=g, dtype=F64)
    probe_arm = torch.randint(0, arms, (4, 3), generator=g)
    flat = joint(probe.reshape(-1, k + d), probe_arm.reshape(-1))
    variance = ((flat @ torch.linalg.inv(A)) * flat).sum(1)
    expected = (flat @ solution + 0.9 * variance.sqrt()).reshape(4, 3)
    assert torch.allclose(policy.score(probe, probe_arm), expected, rtol=1e-9)


def test_diag_linucb_formula() -> None:
    x, reward, weight, arm = _stream(200, 5, seed=6, n_arms=2)
    policy = DiagLinUCB(5, n_arms=2, alpha=0.3, ridge=2.0).partial_fit(x, reward, weight, arm)
    probe = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(7), dtype=F64)
    probe_arm = torch.tensor([[0, 1, 0, 1]] * 3)
    for a in range(2):
        rows = arm == a
        precision = 2.0 + (weight[rows, None] * x[rows] ** 2).sum(0)
        theta = (weight[rows, None] * reward[rows, None] * x[rows]).sum(0) / precision
        p = probe[probe_arm == a]
        expected = p @ theta + 0.3 * torch.sqrt((p**2 / precision).sum(1))
        assert torch.allclose(policy.score(probe, probe_arm)[probe_arm == a], expected,
                              rtol=1e-12)


def test_diag_linucb_merge_of_two_halves_equals_one_learner_over_both() -> None:
    x, reward, weight, arm = _stream(10_000, 6, seed=8, n_arms=7)
    whole = DiagLinUCB(6, n_arms=7, alpha=0.5)
    for rows in torch.split(torch.arange(10_000), 1000):
        whole.partial_fit(x[rows], reward[rows], weight[rows], arm[rows])
    # Two partitions: the even and the odd rows, each learned in its own batches.
    halves = [DiagLinUCB(6, n_arms=7, alpha=0.5) for _ in range(2)]
    for parity, half in enumerate(halves):
        rows = torch.arange(parity, 10_000, 2)
        for part in torch.split(rows, 700):
            half.partial_fit(x[part], reward[part], weight[part], arm[part])
    merged = DiagLinUCB.merged(halves)
    in_place = halves[0].merge(halves[1])
    probe = torch.randn(5, 9, 6, generator=torch.Generator().manual_seed(9), dtype=F64)
    probe_arm = torch.randint(0, 7, (5, 9), generator=torch.Generator().manual_seed(10))
    for combined in (merged, in_place):
        assert combined.n_updates_ == whole.n_updates_ == 10_000
        # Sums in another order: equal up to float64 rounding.
        for name in ("xx_", "xr_", "weight_"):
            assert torch.allclose(getattr(combined, name), getattr(whole, name),
                                  rtol=1e-12, atol=0)
        assert torch.allclose(combined.score(probe, probe_arm), whole.score(probe, probe_arm),
                              rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="other.n_arms=3"):
        whole.merge(DiagLinUCB(6, n_arms=3))


def _trained(policy_type: type, seed: int = 11) -> object:
    x, reward, weight, arm = _stream(500, 4, seed=seed, n_arms=3)
    if policy_type is HybridLinUCB:
        policy = HybridLinUCB(2, 2, 3, refactor_every=3)
    else:
        policy = policy_type(4, n_arms=3)
    for rows in torch.split(torch.arange(500), 64):
        policy.partial_fit(x[rows], reward[rows], weight[rows], arm[rows])
    return policy


ALL = [LinUCB, HybridLinUCB, DiagLinUCB, LinearThompsonSampling, EpsilonGreedy, Softmax]


@pytest.mark.parametrize("policy_type", ALL, ids=lambda t: t.__name__)
def test_state_saved_with_safetensors_gives_identical_scores(policy_type: type,
                                                             tmp_path: Path) -> None:
    trained = _trained(policy_type)
    path = tmp_path / "state.safetensors"
    save_file(trained.state_dict(), str(path))
    fresh = _trained(policy_type, seed=99)  # other state, to be overwritten
    fresh.load_state_dict(load_file(str(path)))
    probe = torch.randn(6, 8, 4, generator=torch.Generator().manual_seed(12), dtype=F64)
    arm = torch.randint(0, 3, (6, 8), generator=torch.Generator().manual_seed(13))
    if policy_type is LinearThompsonSampling:
        before = trained.score(probe, arm, torch.Generator().manual_seed(1))
        after = fresh.score(probe, arm, torch.Generator().manual_seed(1))
    else:
        before, after = trained.score(probe, arm), fresh.score(probe, arm)
    assert torch.equal(before, after)
    # And it goes on learning the same way.
    x, reward, weight, a = _stream(50, 4, seed=14, n_arms=3)
    trained.partial_fit(x, reward, weight, a)
    fresh.partial_fit(x, reward, weight, a)
    if policy_type is not LinearThompsonSampling:
        assert torch.equal(trained.score(probe, arm), fresh.score(probe, arm))


def _frequencies(chosen: torch.Tensor, n: int) -> torch.Tensor:
    """Share of rows that show candidate i at slot p, (n, k)."""
    k = chosen.shape[1]
    counts = torch.zeros(n, k, dtype=F64)
    for slot in range(k):
        counts[:, slot] = torch.bincount(chosen[:, slot], minlength=n).to(F64)
    return counts / chosen.shape[0]


def _reported(chosen: torch.Tensor, propensity: torch.Tensor, n: int) -> torch.Tensor:
    """The propensity reported for candidate i at slot p (the same on every row that shows
    it there: the request is repeated), (n, k); NaN where never shown."""
    k = chosen.shape[1]
    table = torch.full((n, k), float("nan"), dtype=F64)
    for slot in range(k):
        table[chosen[:, slot], slot] = propensity[:, slot]
        for item in torch.unique(chosen[:, slot]):
            values = propensity[chosen[:, slot] == item, slot]
            assert torch.allclose(values, values[0].expand_as(values), rtol=1e-12)
    return table


def _trained_request(policy: object, n: int, d: int = 3) -> torch.Tensor:
    x, reward, _, _ = _stream(300, d, seed=15)
    policy.partial_fit(x, reward)
    return torch.randn(1, n, d, generator=torch.Generator().manual_seed(16), dtype=F64)


@pytest.mark.parametrize("policy", [EpsilonGreedy(3, epsilon=0.3), Softmax(3, temperature=0.7)],
                         ids=["epsilon-greedy", "softmax"])
def test_reported_propensities_match_slot_frequencies(policy: object) -> None:
    n, k, rows = 6, 3, 40_000
    request = _trained_request(policy, n).expand(rows, n, 3)
    chosen, propensity = policy.select(request, k, torch.Generator().manual_seed(17))
    assert all(len(set(row)) == k for row in chosen[:200].tolist())  # no item twice
    frequency = _frequencies(chosen, n)
    reported = _reported(chosen, propensity, n)
    shown = ~torch.isnan(reported)
    sigma = torch.sqrt(reported * (1 - reported) / rows)
    assert bool((torch.abs(frequency - reported)[shown] <= Z * sigma[shown] + 1e-9).all())
    # Every (item, slot) of positive probability was drawn, and each slot's probabilities
    # over the items shown there sum to 1.
    assert torch.allclose(torch.nan_to_num(reported).sum(0), torch.ones(k, dtype=F64),
                          rtol=1e-12)


def test_epsilon_greedy_propensity_formula() -> None:
    policy = EpsilonGreedy(3, epsilon=0.2)
    request = _trained_request(policy, 5).expand(2000, 5, 3)
    greedy = torch.argsort(policy.score(request[:1]), dim=1, descending=True)[0, :2]
    chosen, propensity = policy.select(request, 2, torch.Generator().manual_seed(18))
    expected = 0.8 * (chosen == greedy).to(F64) + 0.2 / 5
    assert torch.allclose(propensity, expected, rtol=1e-12)


def test_thompson_propensity_estimates_match_slot_frequencies() -> None:
    policy = LinearThompsonSampling(3, v=0.5, propensity_samples=400)
    n, k, rows = 5, 2, 4000
    request = _trained_request(policy, n).expand(rows, n, 3)
    chosen, propensity = policy.select(request, k, torch.Generator().manual_seed(19))
    frequency = _frequencies(chosen, n)
    for slot in range(k):
        for item in torch.unique(chosen[:, slot]).tolist():
            estimate = propensity[chosen[:, slot] == item, slot].mean()
            # The frequency's binomial error plus the estimate's bias (1 - p) / (1 + S).
            p = float(frequency[item, slot])
            tolerance = Z * np.sqrt(p * (1 - p) / rows) + 1 / 401
            assert abs(float(estimate) - p) <= tolerance, (item, slot, float(estimate), p)
    assert bool((propensity > 0).all()) and bool((propensity <= 1).all())


def test_bad_hyper_parameters_and_inputs_name_the_field() -> None:
    with pytest.raises(ValueError, match="alpha=-1"):
        LinUCB(3, alpha=-1)
    with pytest.raises(ValueError, match="epsilon=1.5"):
        EpsilonGreedy(3, epsilon=1.5)
    with pytest.raises(ValueError, match="temperature=0"):
        Softmax(3, temperature=0)
    with pytest.raises(ValueError, match="refactor_every=0"):
        LinUCB(3, refactor_every=0)
    with pytest.raises(ValueError, match="ridge=0"):
        DiagLinUCB(3, ridge=0)
    policy = LinUCB(3, n_arms=2)
    with pytest.raises(ValueError, match=r"x.shape=\(2, 4, 2\) must be \(B, N, 3\)"):
        policy.score(torch.zeros(2, 4, 2), torch.zeros(2, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="arm=None must be given"):
        policy.score(torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match=r"arm=2 must be in \[0, 2\)"):
        policy.partial_fit(torch.zeros(1, 3), torch.zeros(1), arm=torch.tensor([2]))
    with pytest.raises(ValueError, match="weight=\\[-1.0\\] must be >= 0"):
        policy.partial_fit(torch.zeros(1, 3), torch.zeros(1), torch.tensor([-1.0]),
                           torch.tensor([0]))
    with pytest.raises(ValueError, match=r"k=5 must be in \[1, 4\]"):
        policy.select(torch.zeros(2, 4, 3), 5, arm=torch.zeros(2, 4, dtype=torch.int64))


def test_cross_features_and_the_batch_policy_adapter() -> None:
    world = World(n_items=50, n_users=30, rank=4, seed=1)
    features = CrossFeatures(world.user_vectors, world.item_vectors)
    users, items = np.array([3, 7]), np.array([[1, 2, 3], [4, 5, 6]])
    x = features(users, items)
    assert x.shape == (2, 3, 25) and features.n_features == 25
    u = np.append(world.user_vectors[7], 1.0)
    v = np.append(world.item_vectors[5], 1.0)
    assert np.allclose(x[1, 1].numpy(), np.outer(u, v).ravel(), rtol=1e-6)
    hadamard = CrossFeatures(world.user_vectors, world.item_vectors, kind="hadamard")
    h = hadamard(users, items)
    assert h.shape == (2, 3, 9)
    assert np.isclose(float(h[0, 0, :4].sum()),
                      float(world.user_vectors[3] @ world.item_vectors[1]), rtol=1e-6)

    # One model per item: the candidate's catalog index is its arm.
    adapter = FeaturePolicy(LinUCB(25, n_arms=world.n_items), features, per_item_arms=True)
    rng = np.random.default_rng(0)
    candidates = rng.permuted(np.tile(np.arange(50), (8, 1)), axis=1)[:, :10]
    users = rng.integers(0, 30, 8)
    slates, propensity = adapter.rank_batch(users, candidates, 3, rng)
    assert slates.shape == (8, 3) and np.all(propensity == 1.0)
    assert all(set(s) <= set(c) for s, c in zip(slates, candidates, strict=True))
    adapter.update(users, slates, np.ones((8, 3)))
    assert adapter.policy.n_updates_ == 24
    # The shown items' arms learned; an unshown item's model is still the prior.
    assert float(adapter.policy.b_[slates[0, 0]].abs().sum()) > 0
    unshown = sorted(set(range(50)) - set(slates.ravel().tolist()))[0]
    assert float(adapter.policy.b_[unshown].abs().sum()) == 0
    with pytest.raises(ValueError, match=r"candidates\[0, 0\]=50 must be in \[0, 50\)"):
        adapter.rank_batch(users[:1], np.array([[50, 1, 2]]), 1, rng)


def _regret_run(seed: int, rounds: int = 3000, batch: int = 100, n_candidates: int = 20
                ) -> dict[str, float]:
    """Cumulative regret of LinUCB, epsilon-greedy and uniform random on one world.

    Rounds come in batches: ``batch`` requests (a random user each, 20 candidates drawn
    uniformly from the catalog) are scored at once, one item is shown per request, and
    each policy then takes one batched update with the clicks. A click is Bernoulli of the
    shown item's attractiveness (grade -> P(click), noise floor 0.1); regret is the best
    candidate's click probability minus the shown one's."""
    world = World(n_items=200, n_users=500, rank=8, seed=seed)
    # Popularity is an observable item feature and part of the true affinity.
    items = np.column_stack([world.item_vectors, world.popularity_bonus])
    features = CrossFeatures(world.user_vectors, items)
    d = features.n_features
    policies = {"linucb": FeaturePolicy(LinUCB(d, alpha=0.5), features),
                "epsilon-greedy": FeaturePolicy(EpsilonGreedy(d, epsilon=0.1), features)}
    regret = dict.fromkeys([*policies, "random"], 0.0)
    rng = np.random.default_rng(seed)
    for _ in range(rounds // batch):
        users = rng.integers(0, world.n_users, batch)
        candidates = np.argsort(rng.random((batch, world.n_items)), axis=1)[:, :n_candidates]
        click_probability = attractiveness(world.relevance(users[:, None], candidates), 0.1)
        best = click_probability.max(1)
        # Candidates are in random order: the first one is a uniformly random choice.
        regret["random"] += float((best - click_probability[:, 0]).sum())
        for name, policy in policies.items():
            slates, _ = policy.rank_batch(users, candidates, 1, rng)
            shown = attractiveness(world.relevance(users, slates[:, 0]), 0.1)
            regret[name] += float((best - shown).sum())
            clicks = rng.random(batch) < shown
            policy.update(users, slates, clicks[:, None].astype(np.float64))
    return regret


def test_linucb_regret_is_below_epsilon_greedy_and_random_on_20_seeds() -> None:
    runs = [_regret_run(seed) for seed in range(20)]
    linucb = np.array([run["linucb"] for run in runs])
    greedy = np.array([run["epsilon-greedy"] for run in runs])
    random = np.array([run["random"] for run in runs])
    assert np.all(linucb < greedy), (linucb, greedy)
    assert np.all(linucb < random), (linucb, random)
    # Not a near tie: on average well below both.
    assert linucb.mean() < 0.8 * greedy.mean() and linucb.mean() < 0.3 * random.mean()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here")
@pytest.mark.parametrize("policy_type", ALL, ids=lambda t: t.__name__)
def test_a_gpu_policy_scores_as_the_cpu_one(policy_type: type) -> None:
    cpu = _trained(policy_type)
    gpu = (HybridLinUCB(2, 2, 3, device="cuda") if policy_type is HybridLinUCB
           else policy_type(4, n_arms=3, device="cuda"))
    gpu.load_state_dict(cpu.state_dict())
    probe = torch.randn(6, 8, 4, generator=torch.Generator().manual_seed(20), dtype=F64)
    arm = torch.randint(0, 3, (6, 8), generator=torch.Generator().manual_seed(21))
    if policy_type is LinearThompsonSampling:
        return  # draws come from another generator on the GPU; the mean is checked below
    assert torch.allclose(gpu.score(probe.cuda(), arm.cuda()).cpu(), cpu.score(probe, arm),
                          rtol=1e-9)
    chosen, propensity = gpu.select(probe.cuda(), 2, arm=arm.cuda())
    assert chosen.shape == (6, 2) and bool((propensity > 0).all())

"""Issue #13's text must-shows, with the real all-MiniLM-L6-v2 weights on a simulated 10k-item
catalog (``title_world``; its title vectors and index are session fixtures of conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from models.retrievers.rocchio import CounterfactualRocchio
from simulation.clicks import PositionBasedModel, examination
from simulation.queries import QueryNoise
from simulation.retrieval import dense_retrieve, exact_word_retrieve, success_at_k
from simulation.search import Intents, sample_intents

K = 10


def test_a_title_query_retrieves_its_item_in_the_top_5(text_encoder, title_world, title_index):
    """Every one of the 10k items is queried with its title; a hit is the item or one with an
    identical title in the top 5. The query text equals the indexed text, so this checks the
    encoder-to-index path end to end (ids, order, exact search), not the model's robustness;
    word order, below, and the noisy-query test do that."""
    items = np.arange(title_world.n_items)
    titles = np.array(title_world.titles(items))
    top = dense_retrieve(title_index, text_encoder.encode(list(titles)), 5)
    rate = float((titles[top] == titles[:, None]).any(axis=1).mean())
    print(f"\ntitle query -> own title in top 5: {rate:.4f} of {len(items)} items")
    assert rate >= 0.95, rate
    # The same with the category said first ("coat acme navy wool"), which the model must
    # encode afresh: a fixed sample of 500 items.
    sample = np.random.default_rng(0).choice(items, 500, replace=False)
    reordered = [" ".join([t.split()[-1], *t.split()[:-1]]) for t in titles[sample]]
    top = dense_retrieve(title_index, text_encoder.encode(reordered), 5)
    moved = float((titles[top] == titles[sample, None]).any(axis=1).mean())
    print(f"category-first title -> own title in top 5: {moved:.4f} of 500")
    assert moved >= 0.95, moved


@dataclass(frozen=True)
class NoisySearch:
    intents: Intents
    clean: list[str]
    noisy: list[str]
    vectors: np.ndarray  # (n, 384) of the noisy queries


@pytest.fixture(scope="module")
def noisy_search(text_encoder, title_world) -> NoisySearch:
    """1000 search intents (half target items, half attribute sets, drawn by popularity as
    simulate_search draws them), each typed once with typo, synonym and truncation noise."""
    rng = np.random.default_rng(7)
    intents = sample_intents(title_world, 1000, rng)
    clean = intents.clean_queries(title_world)
    noise = QueryNoise({"typo": 0.25, "synonym": 0.2, "truncation": 0.15})
    noisy = [noise.apply(query, rng).noisy for query in clean]
    return NoisySearch(intents, clean, noisy, text_encoder.encode(noisy))


def _subset(intents: Intents, rows: np.ndarray) -> Intents:
    return Intents(intents.target[rows], intents.asked[rows], intents.is_item[rows])


def test_dense_beside_exact_word_on_noisy_queries(title_world, title_index, noisy_search):
    """Success@10 (an item of search relevance >= 3 in the top 10) of MiniLM over the title
    index beside the simulator's exact-word engine, on the same 1000 noisy queries.

    Measured: dense 0.699, exact-word 0.858 (on the 82% that noise changed: 0.635 and 0.828).
    Exact-word wins here, for two reasons: when a word is lost to noise
    it still matches the others and falls back to popularity, and the intents' targets are
    drawn by popularity, so the fallback often lands; MiniLM's word pieces misread a noisy
    category word ("shirt" -> "shi", "hoodie" -> "goodie") and then most of its top 10 is
    another category. With the category word intact both do well (dense 0.89, exact 0.94 in
    a one-off breakdown). Asserted: dense within 0.25 of exact-word (a better encoder may
    pass it), and both find every query that noise left clean.
    """
    s = noisy_search
    dense = success_at_k(title_world, s.intents, dense_retrieve(title_index, s.vectors, K), K)
    exact = success_at_k(title_world, s.intents, exact_word_retrieve(title_world, s.noisy, K),
                         K)
    changed = np.array([a != b for a, b in zip(s.clean, s.noisy)])
    print(f"\nsuccess@10 on {len(dense)} noisy queries ({changed.mean():.0%} changed by noise): "
          f"dense {dense.mean():.3f}, exact-word {exact.mean():.3f}; on the changed ones: "
          f"dense {dense[changed].mean():.3f}, exact-word {exact[changed].mean():.3f}")
    assert dense.mean() >= exact.mean() - 0.25, (dense.mean(), exact.mean())
    assert dense[~changed].mean() == exact[~changed].mean() == 1.0  # clean queries: both find


def test_counterfactual_rocchio_lifts_repeated_noisy_queries(title_world, title_index,
                                                            title_vectors, noisy_search):
    """300 distinct noisy queries, each issued 20 times; a click log on a shown top 10 with
    position-based clicks (ULTR examination, which is also the propensity given to the fit);
    Counterfactual Rocchio (defaults: alpha 0.5, clip 0.05) moves each query's MiniLM vector.
    Success@10 of dense retrieval is deterministic per query; "found" is the share of fresh
    issues (new click draws) with a click on an item of grade >= 3.

    Measured, log shown from dense's own top 10: success@10 0.690 -> 0.703, found 0.363 ->
    0.424. Clicks can only pull in what was shown, and two thirds of dense's failures show no
    item of the intended category at all, so success@10 barely moves; the relevant items that
    were shown move up, where users examine them, hence the higher found rate.
    Log shown from the exact-word engine (the engine of simulate_search, whose history a
    deployment has when dense retrieval arrives): success@10 0.690 -> 0.850, found 0.363 ->
    0.502. Asserted with margins below those figures.
    """
    s = noisy_search
    # 300 distinct noisy strings, each the query of one intent, issued by 20 users each.
    first: dict[str, int] = {}
    for row, (clean, noisy) in enumerate(zip(s.clean, s.noisy)):
        if noisy != clean:
            first.setdefault(noisy, row)
    rows = np.array(list(first.values())[:300])
    assert len(rows) == 300
    intents = _subset(s.intents, rows)
    queries = [s.noisy[r] for r in rows]
    q = s.vectors[rows]
    theta = examination(K)
    clicks_of = PositionBasedModel(theta)
    issues = np.repeat(np.arange(len(rows)), 20)
    before_slates = dense_retrieve(title_index, q, K)
    before = success_at_k(title_world, intents, before_slates, K)
    results = {}
    for source, shown in (("dense", before_slates),
                          ("exact-word", exact_word_retrieve(title_world, queries, K))):
        rng = np.random.default_rng(11)
        clicks = clicks_of.sample(intents.relevance(title_world, shown)[issues], rng)
        model = CounterfactualRocchio().fit([queries[i] for i in issues], shown[issues],
                                            clicks, theta, title_vectors)
        after_slates = dense_retrieve(title_index, model.transform(queries, q), K)
        after = success_at_k(title_world, intents, after_slates, K)
        # Fresh issues of the same queries, new click draws: found = a click on grade >= 3.
        fresh = {}
        for name, slates in (("before", before_slates), ("after", after_slates)):
            grades = intents.relevance(title_world, slates)[issues]
            fresh[name] = ((clicks_of.sample(grades, rng) & (grades >= 3)).any(axis=1)).mean()
        results[source] = (after.mean(), fresh)
        print(f"\nlog shown from {source}: dense success@10 {before.mean():.3f} -> "
              f"{after.mean():.3f}; found on fresh issues {fresh['before']:.3f} -> "
              f"{fresh['after']:.3f}; lost {int((before & ~after).sum())}, "
              f"gained {int((~before & after).sum())}")
    dense_after, dense_found = results["dense"]
    assert dense_after >= before.mean(), (before.mean(), dense_after)
    assert dense_found["after"] >= dense_found["before"] + 0.03, dense_found
    exact_after, exact_found = results["exact-word"]
    assert exact_after >= before.mean() + 0.10, (before.mean(), exact_after)
    assert exact_found["after"] >= exact_found["before"] + 0.08, exact_found


def test_retrieval_helpers_check_their_inputs(title_world):
    intents = sample_intents(title_world, 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"slates.shape=\(2, 10\) must be \(n, k\) with n=3"):
        success_at_k(title_world, intents, np.zeros((2, 10), dtype=np.int64))
    assert exact_word_retrieve(title_world, [], 10).shape == (0, 10)
    slates = exact_word_retrieve(title_world, intents.clean_queries(title_world), 10)
    assert success_at_k(title_world, intents, slates).all()  # clean queries: all found

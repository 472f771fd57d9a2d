"""Counterfactual Rocchio on hand-made arrays: the formula, clipping, unbiasedness, state."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from models.retrievers.rocchio import CounterfactualRocchio, normalize_query

ITEMS = np.eye(3)
LOG = dict(queries=["Red Dress", " red   dress", "blue coat"],
           slates=np.array([[0, 1], [1, 2], [2, 0]]),
           clicks=np.array([[1, 0], [0, 1], [0, 0]], dtype=bool),
           propensity=np.array([0.8, 0.02]), item_vectors=ITEMS)


def fit(model: CounterfactualRocchio, **changes) -> CounterfactualRocchio:
    log = dict(LOG, **changes)
    return model.fit(log["queries"], log["slates"], log["clicks"], log["propensity"],
                     log["item_vectors"])


def test_formula_weights_and_clipping_by_hand():
    model = fit(CounterfactualRocchio(alpha=0.5, clip=0.1))
    assert model.queries_ == {"red dress": 0, "blue coat": 1}
    assert model.impressions_.tolist() == [2, 1]
    # red dress: item 0 clicked at position 1 (weight 1/0.8), item 2 at position 2, whose
    # propensity 0.02 is clipped to 0.1 (weight 10); two impressions.
    np.testing.assert_allclose(model.click_sums_, [[1.25, 0, 10], [0, 0, 0]])
    np.testing.assert_allclose(model.centroids_, [[0.625, 0, 5], [0, 0, 0]])
    q = np.array([[0, 1, 0], [0, 1, 0], [2, 0, 0]], dtype=np.float32)
    out = model.transform(["RED dress", "blue coat", "green hat"], q)
    expected = np.array([0.3125, 0.5, 2.5]) / np.linalg.norm([0.3125, 0.5, 2.5])
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)
    np.testing.assert_array_equal(out[1], q[1])  # seen, never clicked: it stays
    np.testing.assert_array_equal(out[2], q[2])  # unseen: returned as given
    assert out.dtype == np.float32
    # Without clipping position 2's click weighs 50.
    np.testing.assert_allclose(fit(CounterfactualRocchio(clip=0.01)).click_sums_[0],
                               [1.25, 0, 50])
    # alpha = 1 never moves; min_impressions leaves rarely seen queries alone.
    np.testing.assert_allclose(fit(CounterfactualRocchio(alpha=1.0)).transform(
        ["red dress"], q[:1]), q[:1])
    np.testing.assert_array_equal(fit(CounterfactualRocchio(min_impressions=3)).transform(
        ["red dress"], q[:1]), q[:1])


def test_per_slot_propensities_and_empty_slots():
    model = fit(CounterfactualRocchio(clip=0.1), slates=np.array([[0, -1], [1, 2], [2, 0]]),
                propensity=np.array([[0.5, 0.5], [0.5, 0.25], [1, 1]]))
    np.testing.assert_allclose(model.click_sums_[0], [2, 0, 4])


def test_inverse_propensity_makes_the_centroid_unbiased():
    """Under the position-based model the weighted centroid recovers sum P(relevant) v;
    the unweighted one (clip=1: every weight 1) is the examination-shrunk one instead."""
    rng = np.random.default_rng(0)
    relevant = np.array([0.2, 0.9, 0.1, 0.8, 0.5])
    theta = np.array([1.0, 0.5, 0.3, 0.2, 0.1])
    n = 100_000
    slates = np.tile(np.arange(5), (n, 1))
    clicks = rng.random((n, 5)) < theta * relevant
    queries = ["q"] * n
    ips = CounterfactualRocchio(clip=0.1).fit(queries, slates, clicks, theta, np.eye(5))
    naive = CounterfactualRocchio(clip=1.0).fit(queries, slates, clicks, theta, np.eye(5))
    np.testing.assert_allclose(ips.centroids_[0], relevant, atol=0.02)
    np.testing.assert_allclose(naive.centroids_[0], theta * relevant, atol=0.01)


def test_partial_fit_adds_up_to_one_fit_and_state_round_trips():
    whole = fit(CounterfactualRocchio(clip=0.1))
    part = CounterfactualRocchio(clip=0.1)
    for rows in (slice(0, 1), slice(1, 3)):
        part.partial_fit(LOG["queries"][rows], LOG["slates"][rows], LOG["clicks"][rows],
                         LOG["propensity"], ITEMS)
    assert part.queries_ == whole.queries_
    np.testing.assert_allclose(part.click_sums_, whole.click_sums_)
    np.testing.assert_array_equal(part.impressions_, whole.impressions_)
    refit = fit(part)  # fit forgets
    np.testing.assert_array_equal(refit.impressions_, whole.impressions_)
    back = CounterfactualRocchio.from_state_dict(whole.state_dict())
    assert back == whole  # the same hyper-parameters
    q = np.ones((2, 3), dtype=np.float32) / np.sqrt(3)
    np.testing.assert_array_equal(back.transform(["red dress", "x"], q),
                                  whole.transform(["red dress", "x"], q))
    with pytest.raises(ValueError, match=r"item_vectors.shape\[1\]=4 must equal the fitted"):
        whole.partial_fit(["a"], [[0]], [[1]], [0.5], np.eye(4))


def test_normalize_query():
    assert normalize_query("  Acme\tNAVY  coat\n") == "acme navy coat"


@pytest.mark.parametrize("kwargs, message", [
    (dict(alpha=1.5), "alpha=1.5 must be in [0, 1]"),
    (dict(clip=0.0), "clip=0.0 must be in (0, 1]"),
    (dict(min_impressions=0), "min_impressions=0 must be an int >= 1"),
    (dict(min_impressions=2.0), "min_impressions=2.0 must be an int >= 1"),
])
def test_bad_hyper_parameters(kwargs, message):
    with pytest.raises(ValueError) as info:
        CounterfactualRocchio(**kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize("changes, message", [
    (dict(slates=np.array([[0, 3], [1, 2], [2, 0]])), "slates=[3] must hold rows of"),
    (dict(slates=np.array([[0, -2], [1, 2], [2, 0]])), "slates=[-2] must be >= -1"),
    (dict(slates=np.array([[0, 1], [1, 2]])), "slates.shape=(2, 2) must be (n, k) with n=3"),
    (dict(clicks=np.array([[1, 0], [0, 2], [0, 0]])), "clicks=[0, 1, 2] must be bool or 0/1"),
    (dict(clicks=np.ones((3, 3))), "clicks.shape=(3, 3) must equal slates.shape=(3, 2)"),
    (dict(propensity=np.array([0.5, 0.5, 0.5])), "propensity.shape=(3,) must be (k,)=(2,)"),
    (dict(propensity=np.array([0.5, 1.5])), "propensities=[1.5] must be in [0, 1]"),
    (dict(queries=["a", "", "b"]), "queries[1]='' must be a non-empty string"),
    (dict(queries="abc"), "queries='abc' must be a sequence of strings"),
    (dict(slates=np.array([[0, -1], [1, 2], [2, 0]]), clicks=np.array([[0, 1], [0, 0], [0, 0]])),
     "clicks='a click on an empty slot' must be False where slates is -1"),
])
def test_bad_logs_name_the_field(changes, message):
    with pytest.raises(ValueError) as info:
        fit(CounterfactualRocchio(), **changes)
    assert str(info.value).startswith(message)


def test_transform_checks():
    with pytest.raises(NotFittedError):
        CounterfactualRocchio().transform(["a"], np.ones((1, 3)))
    model = fit(CounterfactualRocchio())
    with pytest.raises(ValueError, match=r"vectors.shape=\(1, 4\) must be \(n, d\)=\(1, 3\)"):
        model.transform(["a"], np.ones((1, 4)))


def test_as_the_pipelines_query_encoder():
    from models.retrievers import RocchioEncoder
    from ranking.index import VectorIndex
    from ranking.pipeline import Pipeline, Request

    class Base:
        name, dim = "words", 3

        def encode(self, keys):
            return np.tile(np.array([0.0, 1.0, 0.0], dtype=np.float32), (len(keys), 1))

    model = fit(CounterfactualRocchio(alpha=0.5, clip=0.1))
    encoder = RocchioEncoder(Base(), model)
    assert (encoder.name, encoder.dim) == ("words", 3)
    index = VectorIndex(3, model="words")
    index.add(["i0", "i1", "i2"], ITEMS.astype(np.float32))
    pipeline = Pipeline(index, query_encoder=encoder, retrieve=3)
    moved, unseen = pipeline.run([Request(query="red dress"), Request(query="hat")], k=1)
    assert moved[0].item_id == "i2"  # pulled toward the heavily weighted click on item 2
    assert unseen[0].item_id == "i1"  # the base vector, untouched

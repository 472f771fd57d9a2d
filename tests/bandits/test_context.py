"""Context features: layout and dimensions, the crossing against a hand-computed outer product,
the stable signed hash (the same in another process), cold items, and errors naming the
field and the value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from bandits.context import (
    ColdStartPrior,
    ContextFeatures,
    ItemVectors,
    hashed_bucket,
    stable_hash,
)

ROOT = Path(__file__).resolve().parents[2]
CONTEXTS = [{"age": 30.0, "premium": True, "device": "mobile", "country": "fr"},
            {"age": 45, "premium": False, "device": "tablet"},  # no country: nothing added
            {"age": 0.5, "premium": 1, "device": "a-device-never-seen", "country": 7}]


def features(**kwargs) -> ContextFeatures:
    return ContextFeatures(**{"n_hash_buckets": 16, "user_numeric": ("age", "premium"),
                              "user_categorical": ("device", "country"), **kwargs})


def test_dimensions_of_both_crossings() -> None:
    items = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    outer = features().transform(CONTEXTS, items)
    concat = features(cross="concat").transform(CONTEXTS, items)
    assert features().user_dim == 1 + 2 + 16
    assert outer.shape == (3, 5, 19 * (1 + 4 + 1)) == (3, 5, features().dim(4))
    assert concat.shape == (3, 5, 19 + 4 + 1) == (3, 5, features(cross="concat").dim(4))
    assert outer.dtype == torch.float64
    plain = ContextFeatures(cold_start=False).transform([{}] * 3, items)
    assert plain.shape == (3, 5, 1 * (1 + 4))  # only the constant on the user side
    assert torch.equal(plain[:, :, 1:], items.double())


def test_outer_crossing_equals_the_hand_computed_product() -> None:
    spec = ContextFeatures(n_hash_buckets=4, user_numeric=("age",),
                           user_categorical=("device",))
    bucket, sign = hashed_bucket("device", "mobile", 4)
    u = np.array([1.0, 2.0, 0.0, 0.0, 0.0, 0.0])
    u[2 + bucket] = sign
    item, cold_item = np.array([0.5, -1.0]), np.array([3.0, 0.25])
    items = torch.as_tensor(np.stack([item, cold_item])[None])
    got = spec.transform([{"age": 2, "device": "mobile"}], items,
                         known=torch.tensor([[True, False]]))
    assert np.array_equal(got[0, 0].numpy(), np.outer(u, [1.0, *item, 0.0]).ravel())
    assert np.array_equal(got[0, 1].numpy(), np.outer(u, [1.0, *cold_item, 1.0]).ravel())
    concat = ContextFeatures(n_hash_buckets=4, user_numeric=("age",),
                             user_categorical=("device",), cross="concat")
    got = concat.transform([{"age": 2, "device": "mobile"}], items[:, :1])
    assert np.array_equal(got[0, 0].numpy(), np.concatenate([u, item, [0.0]]))


def test_hashed_categories_are_signed_counts_and_unknown_values_land_in_buckets() -> None:
    u = features().user_features(CONTEXTS).numpy()
    assert u[:, :3].tolist() == [[1.0, 30.0, 1.0], [1.0, 45.0, 0.0], [1.0, 0.5, 1.0]]
    hashed = u[:, 3:]

    def signed(*pairs: tuple[str, str]) -> np.ndarray:
        out = np.zeros(16)
        for name, value in pairs:
            bucket, sign = hashed_bucket(name, value, 16)
            out[bucket] += sign
        return out

    assert np.array_equal(hashed[0], signed(("device", "mobile"), ("country", "fr")))
    assert np.array_equal(hashed[1], signed(("device", "tablet")))  # no country: nothing
    # a value never seen lands in a bucket; an integer category hashes as its string
    assert np.array_equal(hashed[2], signed(("device", "a-device-never-seen"), ("country", "7")))
    # a frame gives the same features as the mappings
    frame = pl.DataFrame({"age": [30.0, 45.0, 0.5], "premium": [1, 0, 1],
                          "device": ["mobile", "tablet", "a-device-never-seen"],
                          "country": ["fr", None, "7"]})
    assert torch.equal(features().user_features(frame), torch.as_tensor(u))


def test_hash_is_stable_across_processes() -> None:
    """Another interpreter with another string-hash salt computes the same features, and
    the hash itself is pinned: saved models depend on these buckets."""
    assert stable_hash("device\x1fmobile") == 18066196659509618830
    assert hashed_bucket("device", "mobile", 16) == (14, 1)
    script = ("import sys, torch; from bandits.context import ContextFeatures; "
              "f = ContextFeatures(n_hash_buckets=16, user_categorical=('device', 'country')); "
              "u = f.user_features([{'device': 'mobile', 'country': 'fr'}, {'device': 'x'}]); "
              "sys.stdout.write(repr(u.tolist()))")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    here = ContextFeatures(n_hash_buckets=16, user_categorical=("device", "country"))
    assert out == repr(here.user_features([{"device": "mobile", "country": "fr"},
                                            {"device": "x"}]).tolist())
    assert ContextFeatures(n_hash_buckets=16, user_categorical=("device",), seed=1
                           ).user_features([{"device": "mobile"}]).abs().sum() == 2.0


def test_item_vectors_give_cold_items_the_prior() -> None:
    table = ItemVectors(["a", "b", "c"], [[1.0, 0.0], [0.0, 2.0], [2.0, 1.0]])
    vectors, known = table.lookup(np.array([["b", "new", None], ["c", "a", "a"]], dtype=object))
    assert vectors.shape == (2, 3, 2)
    assert known.tolist() == [[True, False, False], [True, True, True]]
    assert vectors[0, 0].tolist() == [0.0, 2.0] and vectors[1, 1].tolist() == [1.0, 0.0]
    assert vectors[0, 1].tolist() == [1.0, 1.0]  # the mean of the known vectors
    zero = ItemVectors(["a"], [[1.0, 1.0]], prior="zero")
    assert zero.lookup([["x"]])[0].tolist() == [[[0.0, 0.0]]]
    got = ContextFeatures().transform([{}, {}], vectors, known)
    assert got[:, :, -1].tolist() == [[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]  # the cold column


def test_cold_start_prior_is_ridge_with_pseudo_observations() -> None:
    """With ridge lambda = 1, the start predicts n0 |x|^2 r / (1 + n0 |x|^2) at x."""
    x = torch.tensor([[0.6, 0.8, 0.0], [1.0, 2.0, 2.0]], dtype=torch.float64)
    a, b = ColdStartPrior(pseudo_count=4.0, mean_reward=0.3).statistics(x)
    theta = torch.linalg.solve(torch.eye(3, dtype=torch.float64) + a, b)
    norm2 = (x * x).sum(dim=1)
    assert torch.allclose((x * theta).sum(dim=1), 4 * norm2 * 0.3 / (1 + 4 * norm2),
                          rtol=1e-12)
    assert torch.equal(ColdStartPrior(pseudo_count=0.0).statistics(x)[0], torch.zeros(2, 3, 3))


@pytest.mark.parametrize("call, message", [
    (lambda: features().transform([{"age": "30", "premium": 1}], torch.zeros(1, 2, 3)),
     r"contexts\[0\]\['age'\]='30' must be a finite number \(declared in user_numeric\)"),
    (lambda: features().transform([{"premium": 1}], torch.zeros(1, 2, 3)),
     r"contexts\[0\] has no 'age' \(declared in user_numeric\)"),
    (lambda: features().user_features([{"age": 1, "premium": float("nan")}]),
     r"contexts\[0\]\['premium'\]=nan must be a finite number"),
    (lambda: features().user_features([{"age": 1, "premium": 0, "device": 2.5}]),
     r"contexts\[0\]\['device'\]=2.5 must be a string or an integer"),
    (lambda: features().user_features(pl.DataFrame({"age": ["x"], "premium": [1]})),
     r"contexts\['age'\] has dtype String \(e.g. 'x'\): it must be numeric"),
    (lambda: features().transform([{"age": 1, "premium": 0}] * 2, torch.zeros(3, 2, 3)),
     "contexts has 2 rows; item_vectors has 3"),
    (lambda: ContextFeatures(cross="inner"), "cross='inner' must be 'outer' or 'concat'"),
    (lambda: ContextFeatures(n_hash_buckets=0), "n_hash_buckets=0 must be an integer >= 1"),
    (lambda: ContextFeatures(user_numeric=("a",), user_categorical=("a",)),
     "must name each field once"),
    (lambda: ColdStartPrior(pseudo_count=-1.0), "pseudo_count=-1.0 must be a finite number"),
])
def test_bad_contexts_name_the_field_and_value(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()

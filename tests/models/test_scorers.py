"""Ranker artifacts as the pipeline's score step: the scores are the model's own, NaN where
it cannot score, and a pipeline over a real index orders by them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from models.artifacts import load, save
from models.data import InteractionDataModule
from models.recommenders import MF, fit
from models.scorers import ListRankerScorer, RecommenderScorer, artifact_scorer
from models.ultr import IPSListwise, QueryItemFeatures
from ranking.index import VectorIndex
from ranking.pipeline import Candidates, Pipeline, Request

N_USERS, N_ITEMS = 10, 12


def candidates(requests: list[Request], rows: list[list[str | None]]) -> Candidates:
    item_ids = np.array(rows, dtype=object)
    mask = np.array([[i is not None for i in row] for row in rows])
    return Candidates(requests, item_ids, mask, np.where(mask, 0.5, np.nan))


@pytest.fixture(scope="module")
def recommender(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(N_USERS), 4)
    pairs = np.unique(users * N_ITEMS + rng.integers(0, N_ITEMS, len(users)))
    data = InteractionDataModule(pairs // N_ITEMS, pairs % N_ITEMS, n_items=N_ITEMS,
                                 batch_size=16, seed=0,
                                 user_ids=[f"u{u}" for u in range(N_USERS)],
                                 item_ids=[f"i{i}" for i in range(N_ITEMS)])
    model = MF(N_USERS, N_ITEMS, dim=4, lr=0.05)
    fit(model, data, max_epochs=2)
    root = tmp_path_factory.mktemp("artifacts")
    save(model, root / "mf", data=data)
    return root / "mf"


def test_recommender_scores_are_the_models_and_nan_where_unknown(recommender: Path) -> None:
    artifact = load(recommender, recommender.parent)
    scorer = artifact_scorer(artifact)
    assert isinstance(scorer, RecommenderScorer)
    requests = [Request(user_id="u3"), Request(user_id="stranger", query="q")]
    got = scorer.score(candidates(requests, [["i1", "i5", "new"], ["i2", None, "i0"]]))
    want = artifact.model.score(torch.tensor([3, 3]), torch.tensor([1, 5])).numpy()
    np.testing.assert_allclose(got[0, :2], want, rtol=1e-6)
    assert np.isnan(got[0, 2]) and np.isnan(got[1]).all()


def test_pipeline_orders_by_the_recommender(recommender: Path) -> None:
    artifact = load(recommender, recommender.parent)
    vectors = np.random.default_rng(1).normal(size=(N_ITEMS, 4)).astype(np.float32)
    index = VectorIndex(4, model="user-space")
    index.add([f"i{i}" for i in range(N_ITEMS)], vectors)

    class Users:
        name, dim = "user-space", 4

        def encode(self, keys):
            return np.ones((len(keys), 4), dtype=np.float32)

    pipeline = Pipeline(index, user_encoder=Users(), scorer=RecommenderScorer(artifact),
                        retrieve=8)
    [ranked] = pipeline.run([Request(user_id="u4", exclude=frozenset({"i0"}))], k=5)
    assert {r.stage for r in ranked} == {"score"} and "i0" not in {r.item_id for r in ranked}
    items = torch.tensor([int(r.item_id[1:]) for r in ranked])
    np.testing.assert_allclose([r.score for r in ranked],
                               artifact.model.score(torch.full((5,), 4), items).numpy(),
                               rtol=1e-6)
    assert np.all(np.diff([r.score for r in ranked]) <= 0)


def test_search_ranker_scores_its_own_features(tmp_path: Path) -> None:
    items = pl.DataFrame({"item_id": ["a", "b", "c"], "title": ["navy wool coat",
                                                                "red cotton shirt",
                                                                "navy linen shirt"],
                          "price": [1.0, 2.0, 3.0]})
    extractor = QueryItemFeatures(item_features=("price",)).fit(items["title"])
    model = IPSListwise(len(extractor.feature_names_), seed=3)
    save(model, tmp_path / "ranker", feature_names=extractor.feature_names_,
         features={"extractor": "QueryItemFeatures", "params": extractor.get_params()})
    artifact = load(tmp_path / "ranker", tmp_path)
    scorer = artifact_scorer(artifact, items)
    assert isinstance(scorer, ListRankerScorer)
    requests = [Request(query="navy shirt"), Request(user_id="u1")]
    got = scorer.score(candidates(requests, [["c", "a", "zzz"], ["a", "b", None]]))
    x = extractor.transform(["navy shirt"] * 2, ["navy linen shirt", "navy wool coat"],
                            np.array([[3.0], [1.0]]))
    np.testing.assert_allclose(got[0, :2], model(torch.as_tensor(x)).detach().numpy(),
                               rtol=1e-5)
    assert np.isnan(got[0, 2]) and np.isnan(got[1]).all()  # unknown item; no query
    with pytest.raises(ValueError, match="is a search ranker: give the catalog"):
        artifact_scorer(artifact)
    with pytest.raises(ValueError, match="items has no column 'price'"):
        ListRankerScorer(artifact, items.drop("price"))

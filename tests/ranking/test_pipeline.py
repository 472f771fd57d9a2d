"""The retrieve-score-rerank pipeline over a real FAISS index, with small array encoders,
scorers and rerankers that follow the contracts (the parts themselves are tested where they
live)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from ranking.index import VectorIndex
from ranking.pipeline import (
    Candidates,
    Pipeline,
    PipelineInputError,
    Request,
    ScoreOrder,
)

DIM = 8
N_ITEMS = 60


class LookupEncoder:
    """Vectors from a table by key; an unknown key is a KeyError, as the contract says."""

    def __init__(self, name: str, table: dict[str, np.ndarray]) -> None:
        self.name, self.table, self.dim = name, table, DIM

    def encode(self, keys: Sequence[str]) -> np.ndarray:
        return np.stack([self.table[k] for k in keys])


class ReverseIdScorer:
    """Scores by the item number, highest first; NaN for items listed in ``unknown``."""

    name = "reverse-id"

    def __init__(self, unknown: frozenset[str] = frozenset()) -> None:
        self.unknown = unknown

    def score(self, candidates: Candidates) -> np.ndarray:
        out = np.full(candidates.shape, np.nan)
        for (b, n), item in np.ndenumerate(candidates.item_ids):
            if item is not None and item not in self.unknown:
                out[b, n] = float(item.split("-")[1])
        return out


class SwapFirstTwo:
    """Score order with the first two slots swapped, each shown with propensity 0.5."""

    name = "swap"

    def rerank(self, candidates, scores, k, rng):
        positions, _ = ScoreOrder().rerank(candidates, scores, k, rng)
        positions[:, [0, 1]] = positions[:, [1, 0]]
        return positions, np.where(positions >= 0, 0.5, np.nan)


@pytest.fixture(scope="module")
def world() -> tuple[VectorIndex, np.ndarray]:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VectorIndex(DIM, model="toy")
    index.add([f"item-{i}" for i in range(N_ITEMS)], vectors)
    return index, vectors


def make(world, **kwargs) -> Pipeline:
    index, vectors = world
    queries = LookupEncoder("toy", {f"q{i}": vectors[i] for i in range(N_ITEMS)})
    users = LookupEncoder("users", {f"u{i}": -vectors[i] for i in range(N_ITEMS)})
    return Pipeline(index, query_encoder=queries, user_encoder=users, **kwargs)


def exact_top(vectors: np.ndarray, vector: np.ndarray, n: int) -> list[str]:
    order = np.argsort(-(vectors @ vector), kind="stable")[:n]
    return [f"item-{i}" for i in order]


def test_retrieval_only_ranks_by_similarity(world) -> None:
    _, vectors = world
    [ranked] = make(world, retrieve=20).run([Request(query="q5")], k=5)
    assert [r.item_id for r in ranked] == exact_top(vectors, vectors[5], 5)
    assert ranked[0].item_id == "item-5"
    assert [r.position for r in ranked] == [1, 2, 3, 4, 5]
    assert {r.stage for r in ranked} == {"retrieve"}
    assert all(r.score == r.retrieval_score and r.propensity == 1.0 for r in ranked)
    assert np.all(np.diff([r.score for r in ranked]) <= 0)


def test_mixed_batch_matches_one_request_at_a_time(world) -> None:
    pipeline = make(world, retrieve=15, scorer=ReverseIdScorer())
    requests = [Request(query="q1"), Request(user_id="u2"), Request(query="q3", user_id="u9"),
                Request(user_id="u4", exclude=frozenset({"item-59"}))]
    batch = pipeline.run(requests, k=4)
    alone = [pipeline.run([r], k=4)[0] for r in requests]
    assert batch == alone
    _, vectors = world
    # a user request retrieves with the user's vector (the negated item vector here)
    assert {r.item_id for r in batch[1]} <= set(exact_top(vectors, -vectors[2], 15))


def test_exclusions_are_never_returned_and_k_is_kept(world) -> None:
    _, vectors = world
    nearest = exact_top(vectors, vectors[7], 10)
    [ranked] = make(world, retrieve=10).run(
        [Request(query="q7", exclude=frozenset(nearest[:6]))], k=10)
    assert len(ranked) == 10
    assert not {r.item_id for r in ranked} & set(nearest[:6])


def test_scorer_orders_and_unscored_items_follow_by_similarity(world) -> None:
    _, vectors = world
    retrieved = exact_top(vectors, vectors[11], 12)
    unknown = frozenset(retrieved[:2])
    [ranked] = make(world, retrieve=12, scorer=ReverseIdScorer(unknown)).run(
        [Request(query="q11")], k=12)
    scored = [r for r in ranked if r.stage == "score"]
    assert len(scored) == 10
    assert [r.score for r in scored] == sorted((r.score for r in scored), reverse=True)
    assert [r.item_id for r in ranked[10:]] == retrieved[:2]  # unscored: last, similarity order
    assert {r.stage for r in ranked[10:]} == {"retrieve"}


def test_reranker_moves_are_reported_with_their_propensity(world) -> None:
    [plain] = make(world, retrieve=10, scorer=ReverseIdScorer()).run([Request(query="q2")], 3)
    [moved] = make(world, retrieve=10, scorer=ReverseIdScorer(),
                   reranker=SwapFirstTwo()).run([Request(query="q2")], 3)
    assert [r.item_id for r in moved] == [plain[1].item_id, plain[0].item_id, plain[2].item_id]
    assert [r.stage for r in moved] == ["rerank", "rerank", "score"]
    assert [r.propensity for r in moved] == [0.5, 0.5, 0.5]


def test_fewer_candidates_than_k(world) -> None:
    _, vectors = world
    small = VectorIndex(DIM, model="toy")
    small.add(["a", "b", "c"], vectors[:3])
    pipeline = Pipeline(small, query_encoder=LookupEncoder("toy", {"q": vectors[0]}))
    [ranked] = pipeline.run([Request(query="q")], k=5)
    assert [r.item_id for r in ranked][0] == "a" and len(ranked) == 3


@pytest.mark.parametrize("request_kwargs, problem", [
    ({}, "a request needs a query, a user_id, or both"),
    ({"query": "  "}, "query='  ' must be a non-empty string"),
    ({"user_id": 7}, "user_id=7 must be a non-empty string"),
    ({"query": "q", "exclude": "item-1"}, "exclude='item-1' must be a collection"),
])
def test_bad_requests_name_the_field(request_kwargs, problem) -> None:
    with pytest.raises(PipelineInputError, match=problem.replace("(", r"\(")):
        Request(**request_kwargs)


def test_bad_calls_and_parts_are_clear_errors(world) -> None:
    index, vectors = world
    pipeline = make(world)
    with pytest.raises(PipelineInputError, match=r"k=0 must be an integer in \[1, retrieve"):
        pipeline.run([Request(query="q1")], k=0)
    with pytest.raises(PipelineInputError, match=r"k=11 must be an integer in \[1, retrieve=10"):
        make(world, retrieve=10).run([Request(query="q1")], k=11)
    with pytest.raises(PipelineInputError, match="user_id='nobody' is unknown"):
        pipeline.run([Request(user_id="nobody")], k=3)
    with pytest.raises(PipelineInputError, match="query_encoder.name='other' must equal"):
        Pipeline(index, query_encoder=LookupEncoder("other", {}))
    short = LookupEncoder("toy", {})
    short.dim = 4
    with pytest.raises(PipelineInputError, match="query_encoder.dim=4 must equal"):
        Pipeline(index, query_encoder=short)
    users_only = Pipeline(index, user_encoder=LookupEncoder("users", {"u1": vectors[1]}))
    with pytest.raises(PipelineInputError, match=r"requests\[0\].query='q1': this pipeline "
                                                  "has no query encoder"):
        users_only.run([Request(query="q1")], k=3)

    class Twice:
        name = "twice"

        def rerank(self, candidates, scores, k, rng):
            return np.zeros((len(candidates.requests), k), dtype=int), np.ones((1, k))

    with pytest.raises(PipelineInputError, match="chose position 0 of request 0"):
        make(world, reranker=Twice()).run([Request(query="q1")], k=2)

    class Returns:
        name = "fixed"

        def __init__(self, positions, propensity):
            self.positions, self.propensity = np.array(positions), np.array(propensity)

        def rerank(self, candidates, scores, k, rng):
            return self.positions, self.propensity

    for positions, propensity, problem in (
            ([[0.0, 1.0]], [[1.0, 1.0]], "positions of dtype float64"),
            ([[0, 100]], [[1.0, 1.0]], "position 100 for request 0, slot 1"),
            ([[0, -2]], [[1.0, 1.0]], "position -2 for request 0, slot 1"),
            ([[0, 1]], [[1.0, np.nan]], "propensity nan for request 0, slot 1"),
            ([[0, 1]], [[1.5, 1.0]], "propensity 1.5 for request 0, slot 0")):
        with pytest.raises(PipelineInputError, match=problem):
            make(world, retrieve=5, reranker=Returns(positions, propensity)).run(
                [Request(query="q1")], k=2)

    class WrongShape:
        name = "wrong"

        def score(self, candidates):
            return np.zeros((1, 1))

    with pytest.raises(PipelineInputError, match="scorer 'wrong' gave shape"):
        make(world, scorer=WrongShape()).run([Request(query="q1")], k=2)

"""Driving a per-request policy in-process and over real HTTP (uvicorn on a loopback port)."""

from __future__ import annotations

import http.client
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import msgspec
import numpy as np
import pytest

from ranking.slate import Slate, SlateError
from serving.app import create_app
from serving.server import BackgroundServer
from simulation.clicks import PositionBasedModel, examination
from simulation.policies import (
    BatchAsRankingPolicy,
    PerRequestPolicy,
    UniformRandomPolicy,
    oracle_policy,
)
from simulation.remote import HttpPolicy, RemotePolicyError
from simulation.search import simulate_search
from simulation.simulator import simulate
from simulation.world import World

WORLD = World(n_items=800, n_users=400, seed=6)
MODEL = PositionBasedModel(examination(5))


class QueryLengthPolicy:
    """A user's policy: shorter titles first when there is a query; remembers contexts."""

    name = "query-length"

    def __init__(self) -> None:
        self.contexts: list[dict[str, Any]] = []

    def rank(self, context: Mapping[str, Any], candidates: Sequence[str], k: int) -> Slate:
        self.contexts.append(dict(context))
        order = sorted(candidates, key=lambda item: (len(item), item))[:k]
        return Slate(order, [1.0] * len(order))


class BrokenPolicy:
    name = "broken"

    def rank(self, context: Mapping[str, Any], candidates: Sequence[str], k: int) -> Slate:
        return Slate(["not-a-candidate", *candidates[1:k]], [1.0] * k)


@pytest.fixture(scope="module")
def oracle_server() -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(BatchAsRankingPolicy(oracle_policy(WORLD)))) as server:
        yield server


def test_per_request_policy_in_process_gives_the_batch_result() -> None:
    batch = simulate(WORLD, oracle_policy(WORLD), MODEL, n=400, k=5, seed=1)
    one_by_one = simulate(WORLD, PerRequestPolicy(BatchAsRankingPolicy(oracle_policy(WORLD))),
                          MODEL, n=400, k=5, seed=1)
    assert np.array_equal(batch.slates, one_by_one.slates)
    assert np.array_equal(batch.clicks, one_by_one.clicks)


def test_policy_over_http_gives_the_in_process_result(oracle_server: BackgroundServer) -> None:
    remote = HttpPolicy(oracle_server.url)
    over_http = simulate(WORLD, PerRequestPolicy(remote), MODEL, n=300, k=5, seed=2)
    local = simulate(WORLD, oracle_policy(WORLD), MODEL, n=300, k=5, seed=2)
    assert np.array_equal(over_http.slates, local.slates)
    assert np.array_equal(over_http.propensity, local.propensity)
    assert over_http.policy == f"http:{oracle_server.url}"
    remote.close()


def test_exploring_policy_over_http_logs_the_propensities_it_reported() -> None:
    served = BatchAsRankingPolicy(UniformRandomPolicy(), seed=3)
    with BackgroundServer(create_app(served)) as server:
        log = simulate(WORLD, PerRequestPolicy(HttpPolicy(server.url)), MODEL, n=200, k=5,
                       candidates=20, seed=3)
    assert np.allclose(log.propensity, 1 / 20)
    assert len({tuple(row) for row in log.slates}) == 200  # it explored


def test_search_sessions_send_the_typed_query_in_the_context() -> None:
    policy = QueryLengthPolicy()
    with BackgroundServer(create_app(policy)) as server:
        search = simulate_search(WORLD, PerRequestPolicy(HttpPolicy(server.url)), MODEL, 50,
                                 k=5, seed=4)
    assert [c["query"] for c in policy.contexts] == search.steps["noisy"].to_list()
    assert [c["user_id"] for c in policy.contexts] == [f"u{u}" for u in search.steps["user"]]
    assert search.log.queries == search.steps["noisy"].to_list()


def test_malformed_requests_get_422_with_the_field(oracle_server: BackgroundServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", oracle_server.port, timeout=10)
    cases = [
        ({"candidates": ["i1", "i2"], "k": 0}, "k", 0),
        ({"candidates": [], "k": 1}, "candidates", []),
        ({"candidates": ["i1"]}, "k", {"candidates": ["i1"]}),  # missing: the body is shown
        ({"context": {"user_id": "u1"}, "candidates": [""], "k": 1}, "candidates", ""),
    ]
    for body, field, value in cases:
        connection.request("POST", "/rank", msgspec.json.encode(body),
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        detail = msgspec.json.decode(response.read())["detail"]
        assert response.status == 422, body
        assert field in detail[0]["loc"] and detail[0].get("input") == value, detail
    connection.request("POST", "/rank", b"{not json", {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 422 and "json" in response.read().decode().lower()
    # A request the policy cannot answer: 422 naming the value.
    connection.request("POST", "/rank", msgspec.json.encode(
        {"context": {"user_id": "alice"}, "candidates": ["i1"], "k": 1}),
        {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 422
    assert msgspec.json.decode(response.read())["detail"] == \
        "user_id='alice' is not a simulated user id (u<number>)"


def test_a_policy_of_one_world_refuses_users_and_items_outside_it() -> None:
    oracle, rng = oracle_policy(WORLD), np.random.default_rng(0)
    users, pool = np.array([3, WORLD.n_users]), np.array([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match=r"users\[1\]=400 must be in \[0, 400\)"):
        oracle.rank_batch(users, pool, 1, rng)  # NumPy alone: an IndexError
    with pytest.raises(ValueError, match=r"candidates\[1, 0\]=-3 must be in \[0, 800\)"):
        oracle.rank_batch(np.array([3, 4]), np.array([[1, 2], [-3, 4]]), 1, rng)  # or wrapped


def test_a_slate_that_breaks_the_contract_is_never_used() -> None:
    with pytest.raises(SlateError, match="items\\[0\\]='not-a-candidate' is not one of"):
        simulate(WORLD, PerRequestPolicy(BrokenPolicy()), MODEL, n=5, k=3)
    with BackgroundServer(create_app(BrokenPolicy())) as server:
        with pytest.raises(RemotePolicyError, match="answered 500.*broke the slate contract"):
            simulate(WORLD, PerRequestPolicy(HttpPolicy(server.url)), MODEL, n=5, k=3)


async def _not_a_slate(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app that answers every request with JSON that is not a slate."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body",
                "body": msgspec.json.encode({"items": "i1", "propensities": [1.0]})})


def test_an_answer_that_is_not_a_slate_is_a_clear_error() -> None:
    with BackgroundServer(_not_a_slate) as server:
        with pytest.raises(RemotePolicyError, match="the answer is not a slate: "
                                                    "items: Input should be a valid array; "
                                                    "policy: Field required"):
            HttpPolicy(server.url).rank({"user_id": "u1"}, ["i1"], 1)


def test_a_request_the_endpoint_would_refuse_is_not_sent() -> None:
    policy = QueryLengthPolicy()
    with BackgroundServer(create_app(policy)) as server:
        with pytest.raises(RemotePolicyError,
                           match=r"not sent, .*candidates\[2\]='i1' repeats candidates\[0\]"):
            HttpPolicy(server.url).rank({"user_id": "u1"}, ["i1", "i2", "i1"], 2)
    assert policy.contexts == []


def test_an_unreachable_endpoint_is_a_clear_error() -> None:
    with BackgroundServer(create_app(BrokenPolicy())) as server:
        url = server.url
    with pytest.raises(RemotePolicyError, match=f"POST {url}/rank failed"):
        HttpPolicy(url).rank({"user_id": "u1"}, ["i1"], 1)
    with pytest.raises(ValueError, match="base_url='localhost:80' must look like"):
        HttpPolicy("localhost:80")


def test_a_policy_that_answers_too_late_is_a_clear_error() -> None:
    import threading

    release = threading.Event()

    class Stuck:
        name = "stuck"

        def rank(self, context: Mapping[str, Any], candidates: Sequence[str], k: int) -> Slate:
            release.wait(10)
            return Slate(list(candidates[:k]), [1.0] * k)

    with BackgroundServer(create_app(Stuck())) as server:
        with pytest.raises(RemotePolicyError, match="failed: timed out"):
            HttpPolicy(server.url, timeout_s=0.2).rank({"user_id": "u1"}, ["i1"], 1)
        release.set()

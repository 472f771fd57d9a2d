"""The HTTP app over a real loopback socket: what each kind of bad request gets back."""

from __future__ import annotations

import http.client
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from ranking.slate import Slate
from serving.app import MAX_ERRORS, QUOTE_CHARS, create_app
from serving.server import BackgroundServer
from simulation.policies import BatchAsRankingPolicy, oracle_policy, popularity_policy
from simulation.world import World

WORLD = World(n_items=50, n_users=20, seed=11)
JSON = {"Content-Type": "application/json"}
#: Longest error answer any test here accepts: a few errors, each quoting a short prefix.
SMALL_ANSWER = 8 * QUOTE_CHARS * (MAX_ERRORS + 1)


class Recording:
    """Ranks candidates in the order given and remembers every request it saw."""

    name = "recording"

    def __init__(self) -> None:
        self.seen: list[Sequence[str]] = []

    def rank(self, context: Mapping[str, Any], candidates: Sequence[str], k: int) -> Slate:
        self.seen.append(candidates)
        return Slate(list(candidates[:k]), [1.0] * min(k, len(candidates)))


class Buggy:
    name = "buggy"

    def rank(self, context: Mapping[str, Any], candidates: Sequence[str], k: int) -> Slate:
        if context.get("user_id") == "u1":
            return {}[context["user_id"]]  # a KeyError: a bug, not an unanswerable request
        return None  # type: ignore[return-value]  # not a slate at all


def post(server: BackgroundServer, body: bytes | Iterable[bytes],
         headers: Mapping[str, str] = JSON) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("POST", "/rank", body, dict(headers))
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, \
            response.read()
    finally:
        connection.close()


def post_json(server: BackgroundServer, request: Any) -> tuple[int, Any]:
    status, headers, payload = post(server, json.dumps(request).encode())
    assert headers["content-type"] == "application/json", payload[:200]
    return status, json.loads(payload)


@pytest.fixture(scope="module")
def oracle() -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(BatchAsRankingPolicy(oracle_policy(WORLD)))) as server:
        yield server


def test_health_and_a_good_request(oracle: BackgroundServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", oracle.port, timeout=10)
    connection.request("GET", "/health")
    response = connection.getresponse()
    assert (response.status, json.loads(response.read())) == \
        (200, {"status": "ok", "policy": "oracle"})
    connection.close()
    status, answer = post_json(oracle, {"context": {"user_id": "u3"},
                                        "candidates": ["i1", "i9", "i4"], "k": 2})
    best = sorted(["i1", "i9", "i4"], key=lambda item: -WORLD.affinity(3, int(item[1:])))
    assert status == 200 and answer["items"] == best[:2] and answer["policy"] == "oracle"


def test_duplicate_candidates_are_a_422_naming_the_repeat(oracle: BackgroundServer) -> None:
    status, answer = post_json(oracle, {"context": {"user_id": "u1"},
                                        "candidates": ["i1", "i9", "i4", "i9"], "k": 4})
    assert status == 422, answer
    [error] = answer["detail"]
    assert error["loc"] == ["body", "candidates"]
    assert "candidates[3]='i9' repeats candidates[1]" in error["msg"]


def test_unknown_users_and_items_are_a_422_naming_them(oracle: BackgroundServer) -> None:
    cases = [
        ({"user_id": "nobody"}, ["i1", "i2"],
         "user_id='nobody' is not a simulated user id (u<number>)"),
        ({"user_id": "u999999"}, ["i1", "i2"],
         "user_id='u999999' is not a user of this world (u0..u19)"),
        ({"user_id": "u2"}, ["i1", "i999999"],
         "candidates[1]='i999999' is not an item of this world (i0..i49)"),
        ({"user_id": "u2"}, ["i1", "i²"], "candidates[1]='i²' is not a catalog id (i<number>)"),
        ({"user_id": "u2"}, ["i1", "i" + "9" * 40],
         f"candidates[1]='i{'9' * 40}' is not a catalog id (i<number>)"),
    ]
    for context, candidates, detail in cases:
        status, answer = post_json(oracle, {"context": context, "candidates": candidates,
                                            "k": 1})
        assert (status, answer) == (422, {"detail": detail})


def test_a_policy_that_ignores_the_user_answers_a_new_one() -> None:
    with BackgroundServer(create_app(BatchAsRankingPolicy(popularity_policy(WORLD)))) \
            as server:
        status, answer = post_json(server, {"context": {"user_id": "u999999"},
                                            "candidates": ["i1", "i2", "i3"], "k": 1})
    most_popular = max(["i1", "i2", "i3"], key=lambda item: WORLD.popularity[int(item[1:])])
    assert (status, answer["items"]) == (200, [most_popular])


def test_a_failing_policy_is_a_json_500_naming_it_without_a_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="serving.app")
    with BackgroundServer(create_app(Buggy())) as server:
        raised = post_json(server, {"context": {"user_id": "u1"}, "candidates": ["i1"], "k": 1})
        not_a_slate = post_json(server, {"context": {"user_id": "u2"}, "candidates": ["i1"],
                                         "k": 1})
    assert raised == (500, {"detail": "policy 'buggy' failed: KeyError: 'u1'"})
    status, answer = not_a_slate
    assert status == 500
    assert answer["detail"].startswith("policy 'buggy' broke the slate contract: "
                                       "AttributeError")
    assert "Traceback" not in json.dumps([raised, not_a_slate])
    # The traceback goes to the server's log instead.
    assert any(record.exc_info and record.exc_info[0] is KeyError
               for record in caplog.records), caplog.records


def test_a_body_over_the_limit_is_a_413_before_it_is_read() -> None:
    policy = Recording()
    with BackgroundServer(create_app(policy, max_body_bytes=1000)) as server:
        # Only the headers: the answer must come without the body ever being sent.
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.putrequest("POST", "/rank")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", "1001")
        connection.endheaders()
        response = connection.getresponse()
        declared = response.status, json.loads(response.read())
        connection.close()
        # Chunked: no Content-Length, so the bytes are counted as they arrive. The body
        # crosses the limit in its last piece: the server answers and closes while the
        # client may still be sending the terminating chunk, and a client that is still
        # sending when the close arrives sees a reset instead of the answer, so a reset
        # attempt is made again (a few times at most).
        padded = json.dumps({"context": {"pad": "x" * 1000}, "candidates": ["i1"], "k": 1})
        pieces = [padded[:900].encode(), padded[900:].encode()]
        assert len(pieces[0]) <= 1000 < len(padded)
        for attempt in range(5):
            try:
                chunked = post(server, iter(pieces))
                break
            except (ConnectionResetError, BrokenPipeError):
                if attempt == 4:
                    raise
        fits = post(server, iter([b'{"candidates": ["i1"], ', b'"k": 1}']))
    assert declared == (413, {"detail": "Content-Length=1001 is over max_body_bytes=1000"})
    status, headers, payload = chunked
    assert status == 413 and headers["content-type"] == "application/json"
    assert json.loads(payload)["detail"].endswith("is over max_body_bytes=1000")
    assert fits[0] == 200, fits
    assert policy.seen == [["i1"]]  # only the request that fits reached the policy


def test_the_default_limit_is_one_mebibyte(oracle: BackgroundServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", oracle.port, timeout=10)
    connection.putrequest("POST", "/rank")
    connection.putheader("Content-Length", str((1 << 20) + 1))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["detail"] == \
        "Content-Length=1048577 is over max_body_bytes=1048576"
    connection.close()
    with pytest.raises(ValueError, match="max_body_bytes=0 must be at least 1"):
        create_app(Recording(), max_body_bytes=0)


def test_the_limit_comes_from_the_serving_setting(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no clickloop.toml of the checkout's
    monkeypatch.setenv("CLICKLOOP_SERVING_MAX_BODY_BYTES", "500")
    with BackgroundServer(create_app(Recording())) as server:
        declared = post(server, b"x" * 501)
    assert declared[0] == 413 and json.loads(declared[2])["detail"] == \
        "Content-Length=501 is over max_body_bytes=500"


def test_error_answers_quote_a_bounded_prefix_of_the_input(oracle: BackgroundServer) -> None:
    many = [f"item-{i:07d}" for i in range(20_000)]  # over MAX_CANDIDATES, under 1 MiB
    status, headers, payload = post(oracle, json.dumps({"candidates": many, "k": 1}).encode())
    assert status == 422 and len(payload) < SMALL_ANSWER, len(payload)
    [error] = json.loads(payload)["detail"]
    assert error["loc"] == ["body", "candidates"] and error["type"] == "too_long"
    full = json.dumps(many, separators=(",", ":"))
    assert error["input"] == f"{full[:QUOTE_CHARS]}… ({len(full)} characters in all)"
    # One error per bad candidate would be thousands: the first few, then a count.
    status, headers, payload = post(oracle, json.dumps({"candidates": [""] * 5000,
                                                        "k": 1}).encode())
    detail = json.loads(payload)["detail"]
    assert status == 422 and len(payload) < SMALL_ANSWER, len(payload)
    assert len(detail) == MAX_ERRORS + 1
    assert detail[0] == {"type": "string_too_short", "loc": ["body", "candidates", 0],
                         "msg": "String should have at least 1 character", "input": "",
                         "ctx": {"min_length": 1}}
    assert detail[-1]["msg"] == f"{5000 - MAX_ERRORS} more errors not listed (5000 in all)"
    # A value JSON cannot carry back comes back as text (not as a 500).
    status, headers, payload = post(oracle, b'{"candidates": ["i1"], "k": NaN}')
    assert status == 422, payload
    [error] = json.loads(payload)["detail"]
    assert (error["loc"], error["input"]) == (["body", "k"], "nan")
    # A long key is cut where it is echoed in loc, too.
    status, answer = post_json(oracle, {"context": {"k" * 5000: [1]}, "candidates": ["i1"],
                                        "k": 1})
    assert status == 422
    assert all(len(json.dumps(error["loc"])) < 2 * QUOTE_CHARS for error in answer["detail"])


def test_malformed_json_is_a_bounded_422_naming_the_problem(
        oracle: BackgroundServer) -> None:
    bodies = {
        "not JSON": b"{not json",
        "invalid UTF-8": b'{"candidates": ["i1\xff"], "k": 1}',
        "nested too deep": b"[" * 100_000,
        "empty": b"",
        "cut short": json.dumps({"candidates": ["i1"] * 50_000, "k": 1}).encode()[:-3],
    }
    for case, body in bodies.items():
        status, headers, payload = post(oracle, body)
        assert status == 422 and headers["content-type"] == "application/json", case
        assert len(payload) < SMALL_ANSWER, (case, len(payload))
        [error] = json.loads(payload)["detail"]
        assert error["type"] == "json_invalid" and error["loc"][0] == "body", (case, error)
        assert "json" in error["msg"].lower(), (case, error)

"""The event contract: valid events round-trip; every invalid one is named precisely."""

from __future__ import annotations

import msgspec
import pytest

from ingest.codec import (
    InvalidEvent,
    decode,
    decode_batch,
    encode,
)
from ingest.events import Click, Dwell, Impression, Query, Reaction, Slot

IMPRESSION = Impression(
    event_id="e1", ts=1_700_000_000.5, user_id="u1", request_id="r1", policy="linucb",
    experiment="exp", variant="B", query="red shoes", context={"age": 31.0, "geo": "fr"},
    slots=[Slot("i1", 1, 2.5, 0.8), Slot("i2", 2, 1.0, 0.1)],
)
VALID = [
    IMPRESSION,
    Click(event_id="e2", ts=1.0, user_id="u1", request_id="r1", item_id="i1", position=1),
    Reaction(event_id="e3", ts=1.0, user_id="u1", request_id="r1", item_id="i1",
             reaction="love"),
    Dwell(event_id="e4", ts=1.0, user_id="u1", request_id="r1", item_id="i1", seconds=12.5),
    Query(event_id="e5", ts=1.0, user_id="u1", request_id="r1", query="red shoes"),
]


def _impression(**slot: object) -> bytes:
    base = {"item_id": "i", "position": 1, "score": 0.0, "propensity": 0.5}
    base.update(slot)
    return msgspec.json.encode({"type": "impression", "event_id": "e", "ts": 1.0,
                                "user_id": "u", "request_id": "r", "policy": "p",
                                "slots": [base]})


@pytest.mark.parametrize("event", VALID, ids=lambda e: type(e).__name__)
def test_every_event_type_round_trips(event: object) -> None:
    assert decode(encode(event)) == event  # type: ignore[arg-type]


@pytest.mark.parametrize(("raw", "reason"), [
    (_impression(propensity=1.7), "slots[0].propensity=1.7 must be in (0, 1]"),
    (_impression(propensity=0), "slots[0].propensity=0 must be in (0, 1]"),
    (_impression(propensity=-0.2), "slots[0].propensity=-0.2 must be in (0, 1]"),
    (_impression(position=-1), "slots[0].position=-1 must be an integer in [1, 10000]"),
    (_impression(position="2"), "slots[0].position='2' must be int, not str"),
    (_impression().replace(b'"score":0.0', b'"score":1e999'),
     "slots[0].score is out of range"),
    (_impression().replace(b'"propensity":0.5', b'"propensity":NaN'), "not valid JSON"),
    (b'{"type": "click", "event_id": "e", "ts": 1, "user_id": "u", "request_id": "r",'
     b' "item_id": "i"}', "position is required"),
    (b'{"type": "purchase", "event_id": "e"}',
     "type='purchase' must be one of impression, click, reaction, dwell, query"),
    (b'{"event_id": "e"}', "type is required"),
    (b'{"type": "reaction", "event_id": "e", "ts": 1, "user_id": "u", "request_id": "r",'
     b' "item_id": "i", "reaction": "meh"}', "reaction='meh' must be one of like, love"),
    (b'{"type": "dwell", "event_id": "e", "ts": -4, "user_id": "u", "request_id": "r",'
     b' "item_id": "i", "seconds": 1}', "ts=-4 must be a finite number"),
    (b'{"type": "click", "event_id": "", "ts": 1, "user_id": "u", "request_id": "r",'
     b' "item_id": "i", "position": 1}', "event_id='' must be a non-empty string"),
    (b"[1, 2]", "message must be a JSON object"),
    (b"\xff\xfe", "not valid JSON"),
    (None, "no value"),
])
def test_invalid_events_name_field_value_and_rule(raw: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode(raw)
    assert reason in caught.value.reason


def test_repeated_positions_and_items_are_rejected() -> None:
    twice = msgspec.json.encode({
        "type": "impression", "event_id": "e", "ts": 1.0, "user_id": "u", "request_id": "r",
        "policy": "p", "slots": [
            {"item_id": "a", "position": 1, "score": 0, "propensity": 1},
            {"item_id": "b", "position": 1, "score": 0, "propensity": 1}]})
    with pytest.raises(InvalidEvent, match=r"slots.position=\[1, 1\] must not repeat"):
        decode(twice)


def test_oversized_payload_is_rejected_before_parsing() -> None:
    with pytest.raises(InvalidEvent, match="payload is 2000 bytes, over max_event_bytes=1000"):
        decode(b"x" * 2000, max_bytes=1000)


def test_decode_batch_isolates_bad_messages() -> None:
    good = [encode(e) for e in VALID]
    # A message holding two JSON objects is one bad message, not two events.
    raws = [good[0], b"{broken", good[1], b'{"a":1},{"b":2}', good[2], b"x" * 50]
    events, rejected = decode_batch(raws, max_bytes=40_000)
    assert [r.index for r in rejected] == [1, 3, 5]
    assert events[0] == VALID[0] and events[2] == VALID[1] and events[4] == VALID[2]
    assert events[1] is None and events[3] is None and events[5] is None


def test_decode_batch_fast_path_returns_everything() -> None:
    raws = [encode(e) for e in VALID] * 3
    events, rejected = decode_batch(raws)
    assert rejected == [] and events == VALID * 3


@pytest.mark.parametrize("raw", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"type": "click", "event_id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"type": "impression", "context": {"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
    b"{" * 100_000,
])
def test_any_nesting_depth_is_a_rejection_not_a_crash(raw: bytes) -> None:
    events, rejected = decode_batch([encode(VALID[1]), raw, encode(VALID[2])])
    assert events == [VALID[1], None, VALID[2]]
    assert [r.index for r in rejected] == [1] and len(rejected[0].reason) < 300
    with pytest.raises(InvalidEvent):
        decode(raw)


def test_reasons_quote_a_bounded_prefix_of_the_value() -> None:
    long_user = b'{"type": "click", "event_id": "e", "ts": 1, "user_id": "' + b"x" * 1_000_000 \
        + b'", "request_id": "r", "item_id": "i", "position": 1}'
    slots = ",".join(f'{{"item_id": "{"i" * 500}", "position": {p}, "score": 0, '
                     f'"propensity": 1}}' for p in (1, 2))
    repeated = ('{"type": "impression", "event_id": "e", "ts": 1, "user_id": "u", '
                '"request_id": "r", "policy": "p", "slots": [' + slots + "]}").encode()
    _, rejected = decode_batch([long_user, repeated])
    assert rejected[0].reason.startswith("user_id='xxx") and "1,000,002 chars" in \
        rejected[0].reason
    assert rejected[1].reason.startswith("slots.item_id=['iii") and \
        rejected[1].reason.endswith("must not repeat")
    assert all(len(r.reason) < 300 for r in rejected)


def test_null_and_oversized_payloads_are_rejected_unparsed() -> None:
    _, rejected = decode_batch([None, b"abc"], max_bytes=2)
    assert [r.reason for r in rejected] == ["message has no value (null payload)",
                                            "payload is 3 bytes, over max_event_bytes=2"]

"""The columnar validator and the stream's decoder enforce one contract, in the same words."""

from __future__ import annotations

import io
import re

import msgspec
import polars as pl
import pytest

from ingest.codec import InvalidEvent, decode
from ingest.frames import SCHEMAS
from ingest.validation import validate_frame

BASE = {"event_id": "e", "ts": 5.0, "user_id": "u", "request_id": "r"}
SLOT = {"item_id": "i", "position": 1, "score": 0.0, "propensity": 0.5}


def impression(*slots: dict, **fields: object) -> dict:
    return {"type": "impression", **BASE, "policy": "p", "experiment": None, "variant": None,
            "query": None, "context": None, "slots": [dict(SLOT, **s) for s in slots],
            **fields}


def feedback(kind: str, **fields: object) -> dict:
    extra = {"click": {"item_id": "i", "position": 1},
             "reaction": {"item_id": "i", "reaction": "like"},
             "dwell": {"item_id": "i", "seconds": 3.0},
             "query": {"query": "red shoes"}}[kind]
    return {"type": kind, **BASE, **extra, **fields}


BROKEN = [
    impression({"propensity": 1.7}),
    impression({"propensity": 0.0}),
    impression({"propensity": -0.25}),
    impression({}, {"item_id": "j", "position": 0}),
    impression({"position": 10_001}),
    impression({"item_id": ""}),
    impression({}, {"item_id": "j"}, {"item_id": "k", "position": 2}),
    impression({}, {"position": 2}),
    impression(),
    impression({}, event_id=""),
    impression({}, ts=-3.0),
    impression({}, user_id="x" * 513),
    feedback("click", position=-3),
    feedback("click", request_id=""),
    feedback("reaction", reaction="meh"),
    feedback("dwell", seconds=-1.0),
    feedback("query", query=""),
]


def _rule(reason: str) -> tuple[str, str]:
    """(field path, rule) of a reason, ignoring how the value is printed (1 vs 1.0)."""
    match = re.match(r"^([\w.\[\]]+?)(?:=(.*?))? (must .*|is .*)$", reason)
    assert match, reason
    return match.group(1), match.group(3)


@pytest.mark.parametrize("event", BROKEN, ids=lambda e: f"{e['type']}")
def test_both_validators_reject_with_the_same_field_and_rule(event: dict) -> None:
    raw = msgspec.json.encode({k: v for k, v in event.items() if v is not None})
    with pytest.raises(InvalidEvent) as caught:
        decode(raw)
    kind = event["type"]
    frame = pl.read_ndjson(io.BytesIO(msgspec.json.encode(event)), schema=SCHEMAS[kind])
    valid, rejected = validate_frame(kind, frame)
    assert valid.height == 0 and rejected.height == 1
    assert _rule(rejected["reason"][0]) == _rule(caught.value.reason)


def test_valid_rows_pass_and_rejected_rows_keep_their_index() -> None:
    events = [impression({}), impression({"propensity": 2.0}), impression({}, {"item_id": "j",
                                                                               "position": 2})]
    frame = pl.read_ndjson(io.BytesIO(b"\n".join(msgspec.json.encode(e) for e in events)),
                           schema=SCHEMAS["impression"])
    valid, rejected = validate_frame("impression", frame)
    assert valid.height == 2 and rejected["row"].to_list() == [1]
    assert rejected["reason"][0] == "slots[0].propensity=2.0 must be in (0, 1]"


def test_a_frame_without_the_schema_columns_is_refused() -> None:
    with pytest.raises(ValueError, match="lacks columns"):
        validate_frame("click", pl.DataFrame({"event_id": ["e"]}))


def test_columnar_reasons_quote_a_bounded_prefix_like_the_decoder() -> None:
    repeated = [{"item_id": "i" * 500, "position": p} for p in (1, 2)]
    reasons = []
    for event in (feedback("click", user_id="u" * 100_000), impression(*repeated)):
        frame = pl.read_ndjson(io.BytesIO(msgspec.json.encode(event)),
                               schema=SCHEMAS[event["type"]])
        reasons.append(validate_frame(event["type"], frame)[1]["reason"][0])
    assert all(len(reason) < 400 for reason in reasons)
    assert reasons[0].startswith("user_id='uuu") and "(100000 chars)" in reasons[0]
    assert reasons[1].startswith("slots.item_id=[iii") and "must not repeat" in reasons[1]

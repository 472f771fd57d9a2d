"""Encoding and validating decoding of events.

Decoding is msgspec's: typed and strict (``benchmarks/ingest.py`` reports its cost per event
type next to stdlib ``json``).
When a message breaks the contract, the error is rewritten to name the field path, the
offending value and the rule, e.g. ``slots[0].propensity=1.7 must be in (0, 1]``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec
import numpy as np

from ingest.events import FIELD_RULES, Event

_decoder = msgspec.json.Decoder(Event)
_raw_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
_NEWLINE = ord("\n")

#: An object closing and another opening on one line: msgspec's ``decode_lines`` reads both,
#: where a line (a message) must hold exactly one event.
_TWO_VALUES = re.compile(rb"\}[ \t\r]*\{")
_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_PATH_PART = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]")


class InvalidEvent(ValueError):
    """A message that is not a valid event. ``reason`` is the one-line explanation."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that failed validation: where it sat in its batch and why."""

    index: int
    reason: str


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def _lookup(document: object, path: str) -> object:
    node = document
    for name, index in _PATH_PART.findall("." + path):
        try:
            node = node[name] if name else node[int(index)]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _explain(raw: bytes, error: msgspec.ValidationError) -> str:
    text = str(error)
    match = _PATH.search(text)
    message = text[: match.start()] if match else text
    path = match.group("path").lstrip(".") if match else ""
    if message.startswith("Object missing required field"):
        field = message.split("`")[1]
        where = f"{path}.{field}" if path else field
        return f"{where} is required ({FIELD_RULES.get(field, 'missing')})"
    try:
        document = _raw_decoder.decode(raw)
    except msgspec.DecodeError:
        document = None
    if "=" in message and " must " in message:
        # Raised by a __post_init__ check, which already names field, value and rule.
        field = message.split("=", 1)[0]
        return f"{path}.{field}{message[len(field):]}" if path else message
    if not path:
        if message.startswith("Expected `object`"):
            return "message must be a JSON object, " + message.split(", ", 1)[-1]
        return message
    value = _lookup(document, path)
    shown = f"{path}={value!r}" if document is not None else path
    field = re.sub(r"\[\d+\]$", "", path).rsplit(".", 1)[-1]
    rule = FIELD_RULES.get(field)
    if message.startswith("Expected `"):
        expected = message.split("`")[1]
        got = message.split(", got ", 1)[1].strip("`") if ", got " in message else ""
        detail = f"must be {expected}, not {got}" if got else (rule or f"must be {expected}")
        return f"{shown} {detail}"
    if message == "Number out of range":
        return f"{shown} is out of range ({rule or 'finite number expected'})"
    return f"{shown} {rule or message[0].lower() + message[1:]}"


def unparsable(raw: bytes | None, max_bytes: int | None = None) -> str | None:
    """Why a message is rejected before parsing (no payload, or too large), else ``None``."""
    if raw is None:
        return "message has no value (null payload)"
    if max_bytes is not None and len(raw) > max_bytes:
        return f"payload is {len(raw)} bytes, over max_event_bytes={max_bytes}"
    return None


def decode(raw: bytes | None, max_bytes: int | None = None) -> Event:
    """Decode and validate one message, raising :class:`InvalidEvent` with a clear reason."""
    if (reason := unparsable(raw, max_bytes)) is not None:
        raise InvalidEvent(reason)
    assert raw is not None
    try:
        return _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(_explain(raw, exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"not valid JSON: {exc}") from None


def decode_batch(
    raws: Sequence[bytes | None], max_bytes: int | None = None
) -> tuple[list[Event | None], list[Rejected]]:
    """Decode many messages; the result holds ``None`` where a message was rejected.

    One msgspec call per message, mapped over the batch in C while every message is good;
    at the first bad one the batch is decoded again one message at a time, to find and word
    each rejection. (Decoding the batch joined into one JSON array was tried and was slower:
    the join and the large list cost more than the calls they save.)
    """
    decode_one = _decoder.decode
    try:
        if max_bytes is None or max(map(len, raws), default=0) <= max_bytes:
            return list(map(decode_one, raws)), []
    except (TypeError, msgspec.DecodeError):  # a null payload, or an invalid message
        pass
    decoded: list[Event | None] = []
    rejected: list[Rejected] = []
    for index, raw in enumerate(raws):
        if raw is not None and (max_bytes is None or len(raw) <= max_bytes):
            try:
                decoded.append(decode_one(raw))
                continue
            except msgspec.DecodeError:
                pass
        try:
            decode(raw, max_bytes)  # the slow path, only to word the reason
        except InvalidEvent as exc:
            decoded.append(None)
            rejected.append(Rejected(index, exc.reason))
    return decoded, rejected


def decode_lines(text: bytes | memoryview) -> list[Event] | None:
    """The events on the non-blank lines of ``text``, decoded in one msgspec call, when
    every such line holds one valid event; ``None`` when one does not (decode the lines one
    by one, with :func:`decode_batch`, to find and word the rejections).

    Lines that look like two objects are sent the slow way first (now and then a string
    value looks so too; it only costs time), so a line holding two events is rejected,
    as it is when decoded alone.
    """
    if _TWO_VALUES.search(text):
        return None
    try:
        return _decoder.decode_lines(text)
    except msgspec.DecodeError:  # ValidationError included
        return None


def decode_joined(
    joined: bytes | memoryview, lengths: Sequence[int], max_bytes: int | None = None,
    unparsed: Mapping[int, str] | None = None,
) -> tuple[list[Event | None], list[Rejected]]:
    """:func:`decode_batch` for messages that arrive joined with ``b"\n"`` in one buffer
    (how :class:`ingest.stages.ProcessStage` ships a batch), given each message's length.

    When no message contains a newline (the buffer holds exactly ``len(lengths) - 1``) the
    buffer is newline-delimited JSON with one message per line, decoded by
    :func:`decode_lines` in one call. Otherwise, or at the first invalid message, the
    messages are cut out and decoded one by one. ``unparsed`` maps the indices of messages
    the sender already rejected without shipping them (see :func:`unparsable`) to their
    reasons.
    """
    count = len(lengths)
    if not unparsed and count and (max_bytes is None or max(lengths) <= max_bytes) \
            and np.count_nonzero(np.frombuffer(joined, np.uint8) == _NEWLINE) == count - 1:
        events = decode_lines(joined)
        if events is not None and len(events) == count:  # fewer when one was blank
            return events, []
    unparsed = unparsed or {}
    view = memoryview(joined)
    raws: list[bytes | None] = []
    start = 0
    for index, length in enumerate(lengths):
        raws.append(None if index in unparsed else bytes(view[start:start + length]))
        start += length + 1
    events, rejected = decode_batch(raws, max_bytes)
    if unparsed:
        rejected = [Rejected(r.index, unparsed.get(r.index, r.reason)) for r in rejected]
    return events, rejected

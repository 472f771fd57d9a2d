"""Encoding and validating decoding of events: msgspec's, typed and strict, with each
rejection worded to name the field path, a bounded prefix of the value and the rule, e.g.
``slots[0].propensity=1.7 must be in (0, 1]``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from ingest.events import FIELD_RULES, Event, quoted

_decoder = msgspec.json.Decoder(Event)
_raw_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
TOO_DEEP = "message nests deeper than the JSON decoder allows"

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
    except (msgspec.DecodeError, RecursionError):
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
    shown = f"{path}={quoted(value)}" if document is not None else path
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


def decode(raw: bytes | None, max_bytes: int | None = None) -> Event:
    """Decode and validate one message, raising :class:`InvalidEvent` with a clear reason."""
    if raw is None:
        raise InvalidEvent("message has no value (null payload)")
    if max_bytes is not None and len(raw) > max_bytes:
        raise InvalidEvent(f"payload is {len(raw)} bytes, over max_event_bytes={max_bytes}")
    try:
        return _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(_explain(raw, exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"not valid JSON: {exc}") from None
    except RecursionError:  # msgspec's own depth guard, raised before the C stack runs out
        raise InvalidEvent(TOO_DEEP) from None


def decode_batch(
    raws: Sequence[bytes | None], max_bytes: int | None = None
) -> tuple[list[Event | None], list[Rejected]]:
    """Decode many messages; the result holds ``None`` where a message was rejected. The
    batch is mapped through msgspec in C while every message is good; at the first bad one
    it is decoded again one message at a time, to find and word each rejection."""
    decode_one = _decoder.decode
    try:
        if max_bytes is None or max(map(len, raws), default=0) <= max_bytes:
            return list(map(decode_one, raws)), []
    except (TypeError, msgspec.DecodeError, RecursionError):  # a null payload, a bad message
        pass
    decoded: list[Event | None] = []
    rejected: list[Rejected] = []
    for index, raw in enumerate(raws):
        if raw is not None and (max_bytes is None or len(raw) <= max_bytes):
            try:
                decoded.append(decode_one(raw))
                continue
            except (msgspec.DecodeError, RecursionError):
                pass
        try:
            decode(raw, max_bytes)  # the slow path, only to word the reason
        except InvalidEvent as exc:
            decoded.append(None)
            rejected.append(Rejected(index, exc.reason))
    return decoded, rejected


def decode_lines(text: bytes | memoryview) -> list[Event] | None:
    """The events on the non-blank lines of ``text`` in one msgspec call when every line
    holds one valid event; else ``None`` (then :func:`decode_batch` words the rejections).
    A line that looks like two objects takes that slow way, where it is rejected."""
    if _TWO_VALUES.search(text):
        return None
    try:
        return _decoder.decode_lines(text)
    except (msgspec.DecodeError, RecursionError):  # ValidationError included
        return None

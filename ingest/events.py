"""The event contract: one tagged union, validated at the edge.

Every event has ``event_id`` (unique; duplicates are dropped), ``ts`` (seconds since the
Unix epoch, UTC) and ``user_id``. An impression lists every shown slot with the
``propensity`` the serving policy had of putting that item at that position; the feedback
events (click, reaction, dwell) point back at it through ``request_id``. Floats are finite:
msgspec's JSON decoder rejects ``NaN`` and overflowing literals such as ``1e999`` (events
built in Python are validated only when decoded, as the consumer does with all it reads).
On the wire an event is a JSON object whose ``type`` field selects the kind::

    {"type": "click", "event_id": "e1", "ts": 1732320000.0, "user_id": "u7",
     "request_id": "r9", "item_id": "i3", "position": 2}
"""

from __future__ import annotations

from operator import attrgetter
from typing import Annotated, Literal, TypeAlias, get_args

import msgspec

#: Limits shared by the msgspec types below and the columnar checks in ingest.validation.
MAX_ID_CHARS = 512
MAX_POSITION = 10_000
MAX_SLOTS = 1000
MAX_QUERY_CHARS = 2048

NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]
Timestamp = Annotated[float, msgspec.Meta(ge=0)]
Position = Annotated[int, msgspec.Meta(ge=1, le=MAX_POSITION)]
Propensity = Annotated[float, msgspec.Meta(gt=0, le=1)]

ReactionKind = Literal["like", "love", "dislike", "share", "hide", "skip"]
REACTIONS: tuple[str, ...] = get_args(ReactionKind)
EVENT_TYPES = ("impression", "click", "reaction", "dwell", "query")

#: The rule each constrained field obeys, in the words a validation error uses.
FIELD_RULES: dict[str, str] = {
    **dict.fromkeys(("event_id", "user_id", "request_id", "item_id", "policy"),
                    f"must be a non-empty string of at most {MAX_ID_CHARS} characters"),
    "query": f"must be a non-empty string of at most {MAX_QUERY_CHARS} characters",
    "ts": "must be a finite number of seconds since the epoch, >= 0",
    "position": f"must be an integer in [1, {MAX_POSITION}] (1 is the top slot)",
    "propensity": "must be in (0, 1]",
    "score": "must be a finite number",
    "seconds": "must be a finite number >= 0",
    "slots": f"must list between 1 and {MAX_SLOTS} slots",
    "reaction": f"must be one of {', '.join(REACTIONS)}",
    "type": f"must be one of {', '.join(EVENT_TYPES)}",
}


#: How much of an offending value a reason quotes: reasons travel in DLQ headers, rejects
#: files and HTTP answers, and must stay small whatever the input.
MAX_QUOTED_CHARS = 120


def quoted(value: object) -> str:
    """``repr(value)``, cut to :data:`MAX_QUOTED_CHARS` with the full length noted."""
    text = repr(value)
    cut = len(text) > MAX_QUOTED_CHARS
    return f"{text[:MAX_QUOTED_CHARS]}… ({len(text):,} chars)" if cut else text


class EventValueError(ValueError):
    """A value that breaks a rule msgspec's constraints cannot state (uniqueness)."""

    def __init__(self, field: str, value: object, rule: str | None = None) -> None:
        self.field, self.value = field, value
        self.rule = rule or FIELD_RULES.get(field.rsplit(".", 1)[-1], "is invalid")
        super().__init__(f"{field}={quoted(value)} {self.rule}")


class Slot(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """One shown position of an impression."""

    item_id: NonEmpty
    position: Position
    score: float
    propensity: Propensity


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", gc=False):
    event_id: NonEmpty
    ts: Timestamp
    user_id: NonEmpty


class Impression(_Event, tag="impression"):
    """A slate shown to a user; ``context`` holds the features the policy saw."""

    request_id: NonEmpty
    slots: Annotated[list[Slot], msgspec.Meta(min_length=1, max_length=MAX_SLOTS)]
    policy: NonEmpty
    experiment: str | None = None
    variant: str | None = None
    query: str | None = None
    context: dict[str, float | str] | None = None

    def __post_init__(self) -> None:
        slots = self.slots
        if len(slots) == 1:
            return
        # map with attrgetter stays in C: this check runs for every impression decoded.
        for field, of in _UNIQUE_IN_SLOTS:
            if len(set(map(of, slots))) != len(slots):
                raise EventValueError(f"slots.{field}", sorted(map(of, slots)), "must not repeat")


_UNIQUE_IN_SLOTS = tuple((field, attrgetter(field)) for field in ("position", "item_id"))


class Click(_Event, tag="click"):
    request_id: NonEmpty
    item_id: NonEmpty
    position: Position


class Reaction(_Event, tag="reaction"):
    request_id: NonEmpty
    item_id: NonEmpty
    reaction: ReactionKind


class Dwell(_Event, tag="dwell"):
    """Time spent on an item after opening it."""

    request_id: NonEmpty
    item_id: NonEmpty
    seconds: Annotated[float, msgspec.Meta(ge=0)]


class Query(_Event, tag="query"):
    """A query a user typed; ``request_id`` names the impression that answered it."""

    request_id: NonEmpty
    query: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_QUERY_CHARS)]


Event: TypeAlias = Impression | Click | Reaction | Dwell | Query
EVENT_CLASSES: dict[str, type[_Event]] = {c.__struct_config__.tag: c for c in get_args(Event)}


def event_type(event: Event) -> str:
    return event.__struct_config__.tag  # type: ignore[return-value]

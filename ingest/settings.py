"""Typed settings: the loader, and the sections ``ingest`` owns (``serving.settings`` composes
every package's sections into the one type the ``clickloop`` command loads).

Precedence, lowest first: the defaults below (they work on a laptop), a TOML file
(``clickloop.toml`` in the working directory, or the path in ``CLICKLOOP_CONFIG``),
then environment variables named ``CLICKLOOP_<SECTION>_<FIELD>``, for example
``CLICKLOOP_KAFKA_BOOTSTRAP=broker:9092`` or ``CLICKLOOP_INGEST_DEDUPE_WINDOW=500000``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec

Positive = Annotated[int, msgspec.Meta(gt=0)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]

ENV_PREFIX = "CLICKLOOP_"


class KafkaSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: ``host:port[,host:port]`` of a real broker; empty means "start the embedded one".
    bootstrap: str = ""
    topic: str = "events"
    dlq_topic: str = "events.dlq"
    partitions: Positive = 4
    group_id: str = "clickloop"
    #: ``kafka-python`` (always installed) or ``confluent-kafka`` (the ``fast`` extra).
    backend: Literal["kafka-python", "confluent-kafka"] = "kafka-python"
    #: Tansu lets a new group member in after about half of this; 6 s keeps that short.
    session_timeout_ms: Positive = 6000
    request_timeout_ms: Positive = 10000
    #: Largest request the producer sends; raised so oversized events reach the DLQ
    #: with a reason instead of failing at the producer.
    max_request_bytes: Positive = 16 * 1024 * 1024
    #: confluent-kafka only: how long librdkafka (>= 2.4) postpones the next fetch once its
    #: local queue is full. Its default, 1000, feeds a fast consumer in bursts.
    fetch_queue_backoff_ms: Positive = 10


class IngestSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: Events larger than this are rejected to the DLQ, unparsed.
    max_event_bytes: Positive = 1024 * 1024
    #: How many recent ``event_id`` values the consumer remembers to drop duplicates.
    dedupe_window: Positive = 1_000_000
    #: At most this much of a rejected payload is copied into the DLQ record.
    dlq_max_raw_bytes: Positive = 64 * 1024
    poll_max_records: Positive = 5000
    #: Processes that validate a JSON-lines event log during a replay; 0 picks one per core
    #: for a large log and the replaying process alone for a small one (``ingest.jsonl_log``).
    replay_workers: NonNegative = 0
    poll_timeout_s: PositiveFloat = 0.5
    #: The sink is made durable (and offsets committed) after this many events ...
    flush_max_events: Positive = 50_000
    #: ... or this many seconds, whichever comes first.
    flush_interval_s: PositiveFloat = 2.0
    producer_batch_size: Positive = 2000
    #: How long the producer waits for acknowledgements before spooling a batch.
    producer_timeout_s: PositiveFloat = 5.0
    #: A command that sends events (replay, simulate) waits this long for the broker to take
    #: what it had to journal before it gives up and says where the events wait.
    deliver_timeout_s: PositiveFloat = 30.0
    journal_dir: str = ".clickloop/journal"
    journal_max_bytes: Positive = 256 * 1024 * 1024


class Settings(msgspec.Struct, kw_only=True):
    """The sections of ``ingest``. Sections of other packages in a settings file are
    accepted here and checked by the composed type that declares them."""

    kafka: KafkaSettings = msgspec.field(default_factory=KafkaSettings)
    ingest: IngestSettings = msgspec.field(default_factory=IngestSettings)


class SettingsError(ValueError):
    """A setting that cannot be used; the message names where it came from."""


S = TypeVar("S", bound=Settings)


def load_settings(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
    schema: type[S] = Settings,  # type: ignore[assignment]
) -> S:
    """Build settings of type ``schema`` (``ingest``'s sections, or a composition of every
    package's) from defaults, an optional TOML file and the environment."""
    env = os.environ if env is None else env
    explicit = path if path is not None else env.get("CLICKLOOP_CONFIG")
    config_path = Path(explicit or "clickloop.toml")
    data: dict[str, Any] = {}
    source = "defaults"
    if config_path.is_file():
        try:
            data = tomllib.loads(config_path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{config_path}: not valid TOML: {exc}") from None
        source = str(config_path)
    elif explicit:
        raise SettingsError(f"settings file {config_path} does not exist")
    for section in msgspec.structs.fields(schema):
        for name in section.type.__struct_fields__:
            key = f"{ENV_PREFIX}{section.name}_{name}".upper()
            if key in env:
                if not isinstance(data.get(section.name), dict):
                    data[section.name] = {}
                data[section.name][name] = env[key]
    try:
        # strict=False lets environment strings become ints, floats and bools.
        return msgspec.convert(data, schema, strict=False)
    except msgspec.ValidationError as exc:
        text = str(exc)
        at = text.rsplit("`$.", 1)[-1].rstrip("`") if "`$." in text else ""
        section_name, _, name = at.partition(".")
        key = f"{ENV_PREFIX}{section_name}_{name}".upper()
        where = key if key in env else f"{source}: {at}" if at else source
        raise SettingsError(f"invalid setting {where}: {text}") from None

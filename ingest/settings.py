"""One typed settings object for every part of clickloop.

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
from typing import Annotated, Any, Literal

import msgspec

Positive = Annotated[int, msgspec.Meta(gt=0)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]

ENV_PREFIX = "CLICKLOOP_"
CONFIG_ENV = "CLICKLOOP_CONFIG"
DEFAULT_CONFIG_FILE = "clickloop.toml"


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
    #: local queue is full. Its default, 1000, feeds a fast consumer in bursts;
    #: benchmarks/ingest.py measures the raw client with both.
    fetch_queue_backoff_ms: Positive = 10


class IngestSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: Events larger than this are rejected to the DLQ, unparsed.
    max_event_bytes: Positive = 1024 * 1024
    #: How many recent ``event_id`` values the consumer remembers to drop duplicates.
    dedupe_window: Positive = 1_000_000
    #: At most this much of a rejected payload is copied into the DLQ record.
    dlq_max_raw_bytes: Positive = 64 * 1024
    poll_max_records: Positive = 5000
    #: Decode, validate, dedupe and write to the sink in a second process, so the polling
    #: thread only fetches (``ingest.stages.ProcessStage``). With confluent-kafka on 2 cores
    #: it ran 0.97x - 1.39x the rate without it (``benchmarks/README.md``).
    decode_process: bool = False
    #: Processes that validate a JSON-lines event log during a replay, the replaying one
    #: included; 0 picks one per core for a log of 64 MB or more, and the replaying process
    #: alone below (``ingest.jsonl_log``).
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


class StoreSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    log_dir: str = ".clickloop/log"
    artifact_dir: str = ".clickloop/artifacts"
    #: Inactivity that ends a user session.
    session_gap_s: PositiveFloat = 30 * 60.0


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    kafka: KafkaSettings = msgspec.field(default_factory=KafkaSettings)
    ingest: IngestSettings = msgspec.field(default_factory=IngestSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)


class SettingsError(ValueError):
    """A setting that cannot be used; the message names where it came from."""


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    overrides: dict[str, dict[str, str]] = {}
    for section, section_type in _sections().items():
        for name in section_type.__struct_fields__:
            key = f"{ENV_PREFIX}{section}_{name}".upper()
            if key in env:
                overrides.setdefault(section, {})[name] = env[key]
    return overrides


def _sections() -> dict[str, type[msgspec.Struct]]:
    hints = {f.name: f.type for f in msgspec.structs.fields(Settings)}
    return hints  # type: ignore[return-value]


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: msgspec.ValidationError, env_keys: set[str], source: str) -> str:
    text = str(error)
    path = text.rsplit("`$.", 1)[-1].rstrip("`") if "`$." in text else ""
    section, _, field = path.partition(".")
    env_key = f"{ENV_PREFIX}{section}_{field}".upper()
    where = env_key if env_key in env_keys else (f"{source}: {path}" if path else source)
    return f"invalid setting {where}: {text}"


def load_settings(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Build the settings from defaults, an optional TOML file and the environment."""
    env = os.environ if env is None else env
    explicit = path if path is not None else env.get(CONFIG_ENV)
    config_path = Path(explicit) if explicit else Path(DEFAULT_CONFIG_FILE)
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
    overrides = _env_overrides(env)
    data = _merge(data, overrides)
    env_keys = {f"{ENV_PREFIX}{s}_{f}".upper() for s, fs in overrides.items() for f in fs}
    try:
        # strict=False lets environment strings become ints, floats and bools.
        return msgspec.convert(data, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_describe(exc, env_keys, source)) from None

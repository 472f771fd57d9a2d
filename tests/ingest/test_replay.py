from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from ingest.adapters.obd import read_obd
from ingest.broker import EmbeddedBroker
from ingest.codec import encode
from ingest.consumer import EventConsumer
from ingest.events import Click
from ingest.joins import expand_context, join_log
from ingest.jsonl_log import DECODE_BYTES, line_ranges, split_lines
from ingest.logstore import scan
from ingest.producer import EventProducer
from ingest.replay import (
    KafkaTarget,
    ParquetTarget,
    ReplayError,
    open_log,
    replay,
)
from ingest.settings import Settings
from ingest.sink import MemorySink


def test_obd_sample_replayed_to_parquet_reads_back_the_same_rows(
        obd_dir: Path, tmp_path: Path) -> None:
    for policy in ("random", "bts"):
        csv = obd_dir / policy / "men" / "men.csv"
        store = tmp_path / policy
        summary = replay(open_log(csv), ParquetTarget(store))
        original = read_obd(csv)
        clicks = int(original["click"].sum())
        assert summary.rejected == 0 and summary.sent == original.height + clicks
        impressions = scan(store, "impression").explode("slots").unnest("slots").collect()
        back = impressions.select(
            row=pl.col("request_id").str.extract(r"-(\d+)$").cast(pl.Int64),
            item_id=pl.col("item_id").cast(pl.Int64), position="position",
            propensity="propensity", ts="ts").sort("row")
        expected = original.select("row", "item_id", pl.col("position").cast(pl.Int32),
                                   propensity="propensity_score", ts="ts").sort("row")
        assert back.equals(expected.cast(back.schema))
        # The join: one row per (impression, position), the logged propensity, the clicks.
        joined = join_log(store).collect()
        assert joined.height == original.height
        assert joined.select("request_id", "position").n_unique() == original.height
        assert int(joined["clicked"].sum()) == clicks
        assert joined["propensity"].sort().equals(
            original["propensity_score"].sort().alias("propensity"))
        # The request context (what OPE and LinUCB need) reaches every joined row.
        features = expand_context(joined)
        assert {f"user_feature_{i}" for i in range(4)} <= set(features.columns)
        assert features.select(pl.col("^user-item_affinity_.*$")).width >= 10
        assert features["user_feature_0"].null_count() == 0


def test_an_obd_file_replayed_to_parquet_joins_with_its_user_features(tmp_path: Path) -> None:
    folder = tmp_path / "random" / "men"
    folder.mkdir(parents=True)
    pl.DataFrame({
        "": [0, 1], "timestamp": ["2019-11-24 00:03:13+00:00", "2019-11-24 00:03:36+00:00"],
        "item_id": [14, 10], "position": [3, 1], "click": [0, 1],
        "propensity_score": [0.03, 0.05], "user_feature_0": ["a1", "b2"],
        "user_feature_1": ["c3", "c3"], "user-item_affinity_0": [0.0, 1.5],
    }).write_csv(folder / "men.csv")
    replay(open_log(folder / "men.csv"), ParquetTarget(tmp_path / "s"),
           rejects_path=tmp_path / "r")
    rows = expand_context(join_log(tmp_path / "s").collect()).sort("ts")
    assert rows["user_feature_0"].to_list() == ["a1", "b2"]
    assert rows["user-item_affinity_0"].to_list() == [0.0, 1.5]
    assert rows["clicked"].to_list() == [False, True]


def _events_file(tmp_path: Path, seconds: float, n: int) -> Path:
    path = tmp_path / "events.jsonl"
    with open(path, "wb") as handle:
        for i in range(n):
            handle.write(encode(Click(event_id=f"e{i}", ts=1000.0 + seconds * i / (n - 1),
                                      user_id="u", request_id=f"r{i}", item_id="a",
                                      position=1)) + b"\n")
        handle.write(b'{"type": "click", "event_id": "bad", "position": 0}\n')
    return path


def test_replay_rejects_bad_lines_into_a_file_with_reasons(tmp_path: Path) -> None:
    rejects = tmp_path / "rejects.jsonl"
    summary = replay(open_log(_events_file(tmp_path, 1.0, 100)), ParquetTarget(tmp_path / "s"),
                     rejects_path=rejects)
    assert (summary.read, summary.sent, summary.rejected) == (101, 100, 1)
    lines = rejects.read_text().splitlines()
    assert len(lines) == 1 and '"line": 101' in lines[0] and "position=0 must be" in lines[0]


def test_rejected_lines_keep_their_line_numbers_past_the_decode_pieces(tmp_path: Path
                                                                     ) -> None:
    """Three decode pieces: one with a bad line (decoded line by line), a clean one with a
    blank line (in one call), one with a bad last line. Lines are the file's lines."""
    bad = {12_345: b'{"type": "click", "event_id": "b1"}',
           40_001: b'{"type": "click", "event_id": "b2", "position": -1}'}
    lines = [bad.get(n) or encode(Click(event_id=f"e{n}", ts=1000.0 + n, user_id="u",
                                        request_id=f"r{n}", item_id="a", position=1))
             for n in range(1, 40_002)]
    lines.insert(20_000, b"")
    text = b"\n".join(lines) + b"\n"
    assert text.index(bad[12_345]) < DECODE_BYTES < text.index(b"\n\n") < 2 * DECODE_BYTES \
        < text.index(bad[40_001])
    (tmp_path / "log.jsonl").write_bytes(text)
    rejects = tmp_path / "rejects.jsonl"
    summary = replay(open_log(tmp_path / "log.jsonl"), ParquetTarget(tmp_path / "s"),
                     rejects_path=rejects)
    assert (summary.read, summary.sent, summary.rejected) == (40_001, 39_999, 2)
    rows = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [row["line"] for row in rows] == [12_345, 40_002]  # the blank line counts
    assert "is required" in rows[0]["error"] and "position=-1" in rows[1]["error"]


def test_replay_twice_into_the_same_store_adds_nothing(tmp_path: Path) -> None:
    log = _events_file(tmp_path, 1.0, 50)
    for _ in range(2):
        replay(open_log(log), ParquetTarget(tmp_path / "s"), rejects_path=tmp_path / "r")
    assert scan(tmp_path / "s", "click").select(pl.len()).collect().item() == 50


def _read_topic(bootstrap: str, topic: str, n: int, deadline_s: float = 30.0) -> list[bytes]:
    """The values of a topic, read from the beginning until ``n`` arrived (or the deadline)."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False)
    try:
        deadline = time.monotonic() + deadline_s
        partitions: set[int] = set()
        while not partitions and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic) or set()
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        values: list[bytes] = []
        while len(values) < n and time.monotonic() < deadline:
            for messages in consumer.poll(timeout_ms=200).values():
                values += [m.value for m in messages]
        return values
    finally:
        consumer.close()


@pytest.mark.kafka
def test_scaled_event_time_paces_the_replay_from_the_first_event(
        tmp_path: Path, broker: EmbeddedBroker, settings_factory: Callable[..., Settings]
) -> None:
    # 600 events over 3 s of event time at speed 2 must take about 1.5 s, and arrive whole
    # and in order (one user: one partition).
    settings = settings_factory()
    log = _events_file(tmp_path, 3.0, 600)
    target = KafkaTarget(EventProducer(settings, broker.bootstrap))
    started = time.perf_counter()
    summary = replay(open_log(log), target, speed=2.0, rejects_path=tmp_path / "r")
    paced = time.perf_counter() - started
    assert 1.45 <= paced <= 4.0 and summary.sent == 600
    sink = MemorySink()
    with EventConsumer(settings, sink, broker.bootstrap) as consumer:
        consumer.run(max_events=600, idle_timeout_s=30)
    assert sorted(e.event_id for e in sink.events) == sorted(f"e{i}" for i in range(600))
    by_user = [e.ts for e in sink.events]
    assert by_user == sorted(by_user)


@pytest.mark.kafka
def test_replay_to_kafka_forwards_each_valid_line_as_it_was(
        tmp_path: Path, broker: EmbeddedBroker, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory()
    lines = [json.dumps({"user_id": f"u{i}", "position": 1, "item_id": "a", "ts": 5.0 + i,
                         "request_id": f"r{i}", "event_id": f"e{i}", "type": "click"},
                        indent=None, separators=(", ", " : ")).encode() for i in range(50)]
    (tmp_path / "log.jsonl").write_bytes(b"\n".join(lines[:25]) + b"\n{broken\n"
                                         + b"\n".join(lines[25:]) + b"\n")
    summary = replay(open_log(tmp_path / "log.jsonl", keep_messages=True),
                     KafkaTarget(EventProducer(settings, broker.bootstrap)),
                     rejects_path=tmp_path / "r")
    assert (summary.sent, summary.rejected) == (50, 1)
    assert sorted(_read_topic(broker.bootstrap, settings.kafka.topic, 50)) == sorted(lines)


def test_a_deeply_nested_line_is_rejected_and_the_good_lines_kept(tmp_path: Path) -> None:
    good = [encode(Click(event_id=f"e{i}", ts=1.0 + i, user_id="u", request_id=f"r{i}",
                         item_id="a", position=1)) for i in range(10)]
    deep = b"[" * 100_000 + b"]" * 100_000
    (tmp_path / "log.jsonl").write_bytes(b"\n".join([*good[:4], deep, *good[4:]]) + b"\n")
    rejects = tmp_path / "rejects.jsonl"
    summary = replay(open_log(tmp_path / "log.jsonl"), ParquetTarget(tmp_path / "s"),
                     rejects_path=rejects)
    assert (summary.read, summary.sent, summary.rejected) == (11, 10, 1)
    (row,) = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert row["line"] == 5 and "JSON object" in row["error"]
    (tmp_path / "deep.jsonl").write_bytes(deep + b"\n" + good[0] + b"\n")
    summary = replay(open_log(tmp_path / "deep.jsonl"), ParquetTarget(tmp_path / "t"),
                     rejects_path=tmp_path / "r2")  # format detection survives it too
    assert (summary.sent, summary.rejected) == (1, 1)


def test_unknown_inputs_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ReplayError, match="does not exist"):
        open_log(tmp_path / "nothing.csv")
    with pytest.raises(ReplayError, match="not a clickloop log store"):
        open_log(tmp_path)
    for name in ("empty.jsonl", "empty.csv"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(ReplayError, match=f"{name}: the file is empty"):
            open_log(tmp_path / name)
    with pytest.raises(ReplayError, match="speed=0"):
        replay(iter([]), ParquetTarget(tmp_path / "s"), speed=0)


def test_columnar_logs_are_validated_with_the_same_rules(tmp_path: Path) -> None:
    """A CSV click log with broken rows: each lands in the rejects file with its reason."""
    frame = pl.DataFrame({"user_id": ["a", "a", "b", "c"], "item_id": [1, 2, 3, 4],
                          "position": [1, 2, 0, 1], "ts": [1.0, 1.0, 2.0, 3.0],
                          "clicked": [1, 0, 0, 1], "propensity": [0.5, 0.5, 0.5, 1.7]})
    frame.write_csv(tmp_path / "log.csv")
    rejects = tmp_path / "rejects.jsonl"
    summary = replay(open_log(tmp_path / "log.csv", "generic"), ParquetTarget(tmp_path / "s"),
                     rejects_path=rejects)
    reasons = sorted(json.loads(line)["error"] for line in rejects.read_text().splitlines())
    assert reasons == ["slots[0].position=0 must be an integer in [1, 10000] (1 is the top slot)",
                       "slots[0].propensity=1.7 must be in (0, 1]"]
    # One impression rejected with its slot: its click (by request) has no impression left,
    # but the click itself is valid and is kept (the join leaves it out).
    assert summary.rejected == 2
    assert scan(tmp_path / "s", "impression").collect()["request_id"].to_list() == ["a@1.0"]


@pytest.mark.parametrize("chunk_bytes", [7, 64, 1 << 20])
def test_json_lines_are_read_whole_across_chunk_boundaries(tmp_path: Path, chunk_bytes: int
                                                          ) -> None:
    lines = [b'{"n": %d, "pad": "%s"}' % (i, b"x" * (i % 13)) for i in range(300)]
    # CRLF endings, blank and blank-looking lines, and no newline after the last line.
    text = b"\r\n".join(lines[:150]) + b"\n\n  \n" + b"\n".join(lines[150:])
    (tmp_path / "log.jsonl").write_bytes(text)
    read = [line for start, end in line_ranges(tmp_path / "log.jsonl", chunk_bytes)
            for line in split_lines(text[start:end])]
    assert read == lines

"""The online learner: the bounded join, the rows it trains on, checkpoints that resume
exactly, and, against the real embedded broker, a learner killed with SIGKILL and
restarted, and two learners of one group merged."""

from __future__ import annotations

import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bandits.context import ContextFeatures, ItemVectors
from bandits.learner import (
    STATE_FILE,
    JoinWindow,
    LearnerConfig,
    LearnerSink,
    LearnerStateError,
    TrainingRows,
    read_state,
)
from bandits.policies import DiagLinUCB, EpsilonGreedy
from ingest.broker import EmbeddedBroker
from ingest.consumer import EventConsumer
from ingest.frames import SCHEMAS, EventFrames, events_of
from ingest.producer import EventProducer
from ingest.settings import Settings
from ingest.sink import Checkpoint
from simulation.clicks import PositionBasedModel, examination
from simulation.policies import EpsilonGreedyPolicy, popularity_policy
from simulation.simulator import simulate
from simulation.world import World
from tests.ingest.test_kafka_pipeline import wait_for

ROOT = Path(__file__).resolve().parents[2]
N_ITEMS = 300
CURVE = tuple(float(v) for v in examination(5))
#: Must match the flags the learner subprocess gets (see _learn_process).
FEATURES = ContextFeatures(n_hash_buckets=4, user_numeric=("age",),
                           user_categorical=("segment",))


def items() -> ItemVectors:
    world = World(n_items=N_ITEMS, n_users=1, seed=0)
    return ItemVectors([f"i{n}" for n in range(N_ITEMS)], world.item_vectors)


def rows() -> TrainingRows:
    return TrainingRows(FEATURES, items(), CURVE)


def stream(n: int, seed: int = 0) -> EventFrames:
    """``n`` simulated impressions (k = 5) with a user context, and their clicks."""
    world = World(n_items=N_ITEMS, n_users=200, seed=0)
    log = simulate(world, EpsilonGreedyPolicy(popularity_policy(world), 0.3),
                   PositionBasedModel(examination(5)), n=n, k=5, seed=seed)
    frames = log.frames()
    user = pl.col("user_id").str.slice(1).cast(pl.Int64)
    impressions = frames["impression"].with_columns(
        context=pl.format('{{"age": {}, "segment": "s{}"}}', user % 50, user % 3))
    return {"impression": impressions, "click": frames["click"]}


def feed(sink: LearnerSink, frames: EventFrames, chunks: int, topic: str = "t") -> None:
    """The frames to ``sink`` in time order, in ``chunks`` consecutive flushes, as a
    consumer would hand them over."""
    times = pl.concat([f["ts"] for f in frames.values()]).sort()
    cuts = [float(times[int(len(times) * i / chunks)]) for i in range(chunks)] + [np.inf]
    for i, (lo, hi) in enumerate(zip(cuts, cuts[1:], strict=False)):
        sink.write({kind: f.filter((pl.col("ts") >= lo) & (pl.col("ts") < hi))
                    for kind, f in frames.items()})
        sink.flush({(topic, 0): i + 1}, "cluster")


def impression(request: str, ts: float, shown: list[str], context: dict | None = None
               ) -> dict:
    return {"event_id": f"{request}-imp", "ts": ts, "user_id": "u1", "request_id": request,
            "slots": [{"item_id": item, "position": p + 1, "score": 1.0, "propensity": 1.0}
                      for p, item in enumerate(shown)],
            "policy": "p", "experiment": None, "variant": None, "query": None,
            "context": None if context is None else json.dumps(context)}


def click(request: str, ts: float, item: str, position: int, n: int = 0) -> dict:
    return {"event_id": f"{request}-c{position}-{n}", "ts": ts, "user_id": "u1",
            "request_id": request, "item_id": item, "position": position}


def frame(kind: str, records: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(records, schema=SCHEMAS[kind])


# ------------------------------------------------------------------------- the join


def test_window_joins_in_event_time_and_counts_what_it_drops() -> None:
    window = JoinWindow(window_s=30, max_pending=10)
    window.add(frame("impression", [impression("r1", 0.0, ["i1", "i2", "i3"]),
                                    impression("r2", 10.0, ["i4", "i5"]),
                                    impression("r1", 0.5, ["i9"])]),  # same request again
               frame("click", [click("r1", 2.0, "i2", 2), click("r1", 3.0, "i2", 2, 1),
                               click("r1", 4.0, "i7", 1),  # not shown to r1
                               click("r0", 5.0, "i1", 1)]))  # never shown
    window.add(None, frame("click", [click("r2", 45.0, "i4", 1)]))  # 35 s after r2: late
    c = window.counters_
    assert (c.impressions_seen, c.impressions_duplicate) == (3, 1)
    assert (c.clicks_seen, c.clicks_joined, c.clicks_off_slate, c.clicks_orphaned,
            c.clicks_late) == (5, 2, 1, 1, 1)
    # Watermark 45: r1 (t=0) and r2 (t=10) both closed at 45 - 30 = 15.
    taken, clicked = window.take_due()
    assert taken["request_id"].to_list() == ["r1", "r2"]
    assert clicked.rows() == [("r1", "i2")]
    assert taken["last_ts"].to_list() == [3.0, 10.0]
    assert window.pending_.height == 0 and c.impressions_applied == 2
    # A click of an applied impression is an orphan.
    window.add(None, frame("click", [click("r1", 46.0, "i1", 1)]))
    assert c.clicks_orphaned == 2


def test_window_applies_the_oldest_beyond_max_pending() -> None:
    window = JoinWindow(window_s=1000, max_pending=2)
    window.add(frame("impression", [impression(f"r{i}", float(t), ["i1"])
                                    for i, t in enumerate([5, 1, 3, 4])]), None)
    taken, _ = window.take_due()
    assert sorted(taken["request_id"].to_list()) == ["r1", "r2"]  # t = 1 and 3
    assert window.pending_["request_id"].to_list() == ["r0", "r3"]
    assert window.take_due(everything=True)[0].height == 2


def test_examination_correction_recovers_relevance_whatever_the_position() -> None:
    """Two items of relevance 0.3, one always shown at the top (theta 1), one always third
    (theta_3): the corrected rewards, what the ridge statistics regress on, average 0.3 at
    every position (tolerance 0.02), where raw clicks average theta_p * 0.3."""
    rng = np.random.default_rng(5)
    n = 20_000
    imps = frame("impression", [impression(f"r{i}", float(i), ["i1", "i2", "i3"], None)
                                for i in range(n)])
    theta = np.array(CURVE[:3])
    clicks = rng.random((n, 3)) < theta * 0.3
    clicked = pl.DataFrame({"request_id": [f"r{i}" for i, s in np.argwhere(clicks)],
                            "item_id": [f"i{s + 1}" for i, s in np.argwhere(clicks)]})
    training = rows()
    x, reward, weight = training.build(imps, clicked)
    per_slot = reward.numpy().reshape(n, 3).mean(axis=0)
    np.testing.assert_allclose(per_slot, [0.3, 0.3, 0.3], atol=0.02)
    assert set(weight.tolist()) == {1.0}


def test_rows_cross_context_and_item_with_examination_weights() -> None:
    vectors = items()
    training = rows()
    imps = frame("impression", [impression("r1", 0.0, ["i3", "i8", "new"],
                                           {"age": 7, "segment": "s2", "other": 1}),
                                impression("r2", 1.0, ["i5"], None)])
    clicked = pl.DataFrame({"request_id": ["r1"], "item_id": ["i8"]})
    x, reward, weight = training.build(imps, clicked)
    assert x.shape == (4, training.dim)
    np.testing.assert_allclose(reward.numpy(), [0.0, 1 / CURVE[1], 0.0, 0.0], rtol=1e-12)
    assert weight.tolist() == [1.0, 1.0, 1.0, 1.0]
    v, known = vectors.lookup([["i3", "i8", "new"]])
    expected = FEATURES.transform([{"age": 7, "segment": "s2"}], v, known)[0]
    np.testing.assert_allclose(x[:3].numpy(), expected.numpy(), atol=1e-12)
    # No context: the numeric field reads 0 and no categorical bucket is set.
    v, known = vectors.lookup([["i5"]])
    expected = FEATURES.transform([{"age": 0}], v, known)[0, 0]
    np.testing.assert_allclose(x[3].numpy(), expected.numpy(), atol=1e-12)


# ---------------------------------------------------- checkpoints, without a broker


@pytest.mark.parametrize("policy", ["diag-linucb", "linucb"])
def test_state_is_independent_of_batching_and_restarts(tmp_path: Path, policy: str) -> None:
    frames = stream(1000)
    config = LearnerConfig(policy=policy, window_s=20.0)  # type: ignore[arg-type]
    whole = LearnerSink(tmp_path / "whole", rows(), config)
    feed(whole, frames, chunks=3)
    whole.drain()
    # Fed in 9 flushes, closed and reopened from its checkpoint after each.
    times = pl.concat([f["ts"] for f in frames.values()]).sort()
    cuts = [float(times[int(len(times) * i / 9)]) for i in range(9)] + [np.inf]
    for i, (lo, hi) in enumerate(zip(cuts, cuts[1:], strict=False)):
        part = LearnerSink(tmp_path / "parts", rows(), config)
        part.write({kind: f.filter((pl.col("ts") >= lo) & (pl.col("ts") < hi))
                    for kind, f in frames.items()})
        part.flush({("t", 0): i + 1}, "cluster")
        part.write(frames)  # written after the last flush: never durable, never applied
        part.close()
    part = LearnerSink(tmp_path / "parts", rows(), config)
    assert part.checkpoint().offsets == {("t", 0): 9}
    part.drain()
    a, b = whole.policy_.state_dict(), part.policy_.state_dict()
    for name in ("xx", "xr", "weight") if policy == "diag-linucb" else ("A", "b", "A_inv"):
        torch.testing.assert_close(b[name], a[name], rtol=1e-9, atol=1e-9)
    counts = whole.counters.as_dict()
    assert counts["impressions_applied"] == 1000
    assert counts["clicks_joined"] == frames["click"].height
    assert counts["rows_updated"] == 1000 * 5 == int(a["n_updates"]) == int(b["n_updates"])
    assert {**part.counters.as_dict(), "updates": 0} == {**counts, "updates": 0}
    part.close()
    with pytest.raises(LearnerStateError, match="written by a learner with"):
        LearnerSink(tmp_path / "parts", rows(), LearnerConfig(policy="linucb" if policy ==
                                                              "diag-linucb" else "diag-linucb"))


def test_epsilon_greedy_learner_validates_epsilon_and_keeps_its_checkpoint_to_itself(
        tmp_path: Path) -> None:
    config = LearnerConfig(policy="epsilon-greedy", epsilon=0.2, window_s=20.0)
    sink = LearnerSink(tmp_path / "eg", rows(), config)
    assert isinstance(sink.policy_, EpsilonGreedy) and sink.policy_.epsilon == 0.2
    feed(sink, stream(200), chunks=2)
    sink.drain()
    assert int(sink.policy_.state_dict()["n_updates"]) == 200 * 5
    sink.close()
    with pytest.raises(ValueError, match=r"epsilon=1\.5 must be a number in \[0, 1\]"):
        LearnerConfig(policy="epsilon-greedy", epsilon=1.5)
    for other in ("diag-linucb", "linucb"):
        with pytest.raises(LearnerStateError, match="written by a learner with"):
            LearnerSink(tmp_path / "eg", rows(), LearnerConfig(policy=other))  # type: ignore
    resumed = LearnerSink(tmp_path / "eg", rows(), config)
    assert resumed.counters.impressions_applied == 200
    resumed.close()


def _rewrite(path: Path, metadata: dict[str, str | None], drop: str | None = None) -> None:
    """The checkpoint at ``path`` with metadata fields replaced (None: removed) and the
    tensor ``drop`` left out."""
    with safe_open(str(path), framework="pt") as handle:
        meta = {**(handle.metadata() or {})}
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    for name, value in metadata.items():
        if value is None:
            meta.pop(name)
        else:
            meta[name] = value
    tensors.pop(drop, None)
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize(("metadata", "drop", "field"), [
    ({"counters": None}, None, "'counters'"),
    ({"offsets": '{"t": 3}'}, None, "offsets="),
    ({"offsets": '[["t", "zero", 3]]'}, None, "offsets="),
    ({"watermark": "soon"}, None, "watermark="),
    ({"cluster_id": "7"}, None, "cluster_id="),
    ({"config": "[]"}, None, "config="),
    ({"counters": '{"clicks_seen": "many"}'}, None, "counters="),
    ({}, "pending", "'pending'"),
    ({}, "clicked", "'clicked'"),
])
def test_malformed_checkpoint_names_the_file_and_the_field(
        tmp_path: Path, metadata: dict[str, str | None], drop: str | None, field: str) -> None:
    sink = LearnerSink(tmp_path, rows(), LearnerConfig(window_s=20.0))
    feed(sink, stream(50), chunks=1)
    sink.close()
    path = tmp_path / STATE_FILE
    _rewrite(path, metadata, drop)
    with pytest.raises(LearnerStateError, match=re.escape(str(path)) + ".*" + field):
        read_state(path)
    with pytest.raises(LearnerStateError, match=field):
        LearnerSink(tmp_path, rows(), LearnerConfig(window_s=20.0))


def test_pending_frame_without_its_columns_is_refused(tmp_path: Path) -> None:
    sink = LearnerSink(tmp_path, rows(), LearnerConfig(window_s=20.0))
    feed(sink, stream(50), chunks=1)
    sink.close()
    path = tmp_path / STATE_FILE
    buffer = io.BytesIO()
    pl.DataFrame({"request_id": ["r1"]}).write_parquet(buffer)
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    tensors["pending"] = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(LearnerStateError, match="field pending lacks the columns"):
        read_state(path)


# ------------------------------------------------------- giving partitions back


def _split(frames: EventFrames, cuts: list[float]) -> list[EventFrames]:
    """``frames`` cut at the event times ``cuts``: consecutive phases."""
    bounds = [-np.inf, *cuts, np.inf]
    return [{kind: f.filter((pl.col("ts") >= lo) & (pl.col("ts") < hi))
             for kind, f in frames.items()} for lo, hi in zip(bounds, bounds[1:], strict=False)]


def _straddling(frames: EventFrames, cuts: list[float]) -> pl.DataFrame:
    """The clicks with a phase boundary between them and their impression."""
    phase = pl.lit(0)
    for cut in cuts:
        phase = phase + (pl.col("ts") >= cut).cast(pl.Int32)
    imps = frames["impression"].select("request_id", imp_phase=phase)
    return (frames["click"].with_columns(phase=phase).join(imps, on="request_id")
            .filter(pl.col("phase") > pl.col("imp_phase")).drop("phase", "imp_phase"))


def _merged_equals_single(tmp_path: Path, sinks: list[LearnerSink], frames: EventFrames,
                          orphaned: pl.DataFrame, config: LearnerConfig) -> None:
    """The merge of ``sinks`` is the learner of ``frames`` without the ``orphaned`` clicks
    (1e-9), and the counters account for every impression and click once."""
    n = frames["impression"].height
    counts = [s.counters for s in sinks]
    assert sum(c.impressions_seen for c in counts) == n
    assert sum(c.impressions_applied for c in counts) == n
    assert sum(c.clicks_seen for c in counts) == frames["click"].height
    assert sum(c.clicks_orphaned for c in counts) == orphaned.height > 0
    assert sum(c.clicks_joined for c in counts) == frames["click"].height - orphaned.height
    reference = LearnerSink(tmp_path / "single", rows(), config)
    feed(reference, {"impression": frames["impression"],
                     "click": frames["click"].join(orphaned, on="event_id", how="anti")}, 4)
    reference.drain()
    merged = DiagLinUCB.merged([s.policy_ for s in sinks])
    for name in ("xx_", "xr_", "weight_"):
        torch.testing.assert_close(getattr(merged, name), getattr(reference.policy_, name),
                                   rtol=1e-9, atol=1e-9)
    assert merged.n_updates_ == reference.policy_.n_updates_ == n * 5
    reference.close()


def test_revoke_applies_what_waits_and_forgets_the_partitions_offsets(tmp_path: Path) -> None:
    """Learner A reads phase 1, gives partition 0 up (after its flush) and B reads phase 2:
    A applied its waiting impressions once, with the clicks of phase 1; B counts the later
    clicks of those impressions as orphans; A's checkpoint, reopened, keeps partition 1
    only. Merged, they are the learner of the whole stream less those clicks (1e-9)."""
    config = LearnerConfig(window_s=1e6)
    frames = stream(600, seed=4)
    cut = float(frames["impression"]["ts"].sort()[300])
    first, second = _split(frames, [cut])
    a = LearnerSink(tmp_path / "a", rows(), config)
    a.write(first)
    a.flush({("t", 0): 40, ("t", 1): 70}, "cluster")
    waiting = a.pending
    assert waiting == 300 and a.counters.impressions_applied == 0
    a.revoke([])  # kafka-python's empty revoke before the first join: nothing given up
    assert a.pending == waiting and a.checkpoint().offsets == {("t", 0): 40, ("t", 1): 70}
    a.revoke([("t", 0)])
    assert a.pending == 0
    assert (a.counters.impressions_applied, a.counters.impressions_revoked) == (300, 300)
    a.close()
    a = LearnerSink(tmp_path / "a", rows(), config)  # what the revoke made durable
    assert a.checkpoint() == Checkpoint("cluster", {("t", 1): 70})
    assert a.counters.impressions_revoked == 300
    b = LearnerSink(tmp_path / "b", rows(), config)
    b.write(second)
    b.flush({("t", 0): 90, ("t", 1): 95}, "cluster")
    b.drain()
    _merged_equals_single(tmp_path, [a, b], frames, _straddling(frames, [cut]), config)
    a.revoke([("t", 1)])  # nothing waits: only the offset goes
    assert a.counters.updates == 1 and a.checkpoint().offsets == {}
    assert read_state(tmp_path / "a").checkpoint.offsets == {}


class _Recorder:
    """A sink that records the calls a consumer makes."""

    def __init__(self, with_revoke: bool) -> None:
        self.calls: list[tuple[str, object]] = []
        if with_revoke:
            self.revoke = lambda partitions: self.calls.append(("revoke", partitions))

    def flush(self, offsets: dict, cluster_id: str | None) -> None:
        self.calls.append(("flush", dict(offsets)))

    def checkpoint(self) -> Checkpoint:
        return Checkpoint("c", {("t", 0): 5, ("t", 1): 6})


class _Client:
    def __init__(self, calls: list[tuple[str, object]], commits: bool = True) -> None:
        self.calls = calls
        self.commits = commits

    def commit(self, offsets: dict) -> bool:
        self.calls.append(("commit", dict(offsets)))
        return self.commits

    def cluster_id(self) -> str:
        return "c"


@pytest.mark.parametrize("with_revoke", [True, False])
def test_consumer_flushes_commits_then_revokes_and_leaves_the_rest_to_the_group(
        with_revoke: bool) -> None:
    """No broker: the rebalance callbacks of :class:`EventConsumer` on a recording sink."""
    sink = _Recorder(with_revoke)
    consumer = EventConsumer.__new__(EventConsumer)  # only the state the callbacks use
    consumer.sink = sink  # type: ignore[assignment]
    consumer._client = _Client(sink.calls)  # type: ignore[assignment]
    consumer.dlq = type("Dlq", (), {"flush": lambda self: None})()  # type: ignore[assignment]
    consumer._pending_offsets = {("t", 0): 9}
    consumer._cluster_id = "c"
    consumer._on_revoke([("t", 0), ("t", 1)])
    expected = [("flush", {("t", 0): 9}), ("commit", {("t", 0): 9})]
    assert sink.calls == expected + ([("revoke", [("t", 0), ("t", 1)])] if with_revoke else [])
    sink.calls.clear()
    consumer._on_revoke([])
    assert sink.calls == [("flush", {})]  # an empty revoke gives nothing up
    # Seek only where the sink has an offset; partition 2 starts at the committed offset.
    assert consumer._on_assign([("t", 1), ("t", 2)]) == {("t", 1): 6}
    # A commit the broker refused: the sink keeps its offsets, the only record left.
    sink.calls.clear()
    consumer._client = _Client(sink.calls, commits=False)  # type: ignore[assignment]
    consumer._pending_offsets = {("t", 0): 12}
    consumer._on_revoke([("t", 0)])
    assert sink.calls == [("flush", {("t", 0): 12}), ("commit", {("t", 0): 12})]


@pytest.mark.kafka
def test_learners_leaving_and_rejoining_a_group_apply_every_event_once(
        broker: EmbeddedBroker, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    """A alone reads phase 1; B joins for phase 2; A closes and B reads phase 3 alone; A
    rejoins from its folder for phase 4. Each rebalance makes the learners apply what waits
    and give their partitions' offsets back, so nobody reads an event twice (the consumed
    counts add up to the stream) and the merged model is the single learner of the stream
    less the clicks that crossed a rebalance (orphaned, counted), within 1e-9."""
    settings = settings_factory(kafka={"partitions": 2, "session_timeout_ms": 3000},
                                ingest={"flush_interval_s": 0.2})
    config = LearnerConfig(window_s=1e6)  # only a rebalance applies an impression early
    frames = stream(1200, seed=3)
    times = frames["impression"]["ts"].sort()
    cuts = [float(times[300 * i]) for i in (1, 2, 3)]
    phases = _split(frames, cuts)
    running: dict[str, tuple[EventConsumer, threading.Thread, threading.Event]] = {}
    finished: list[EventConsumer] = []

    def settle() -> None:
        # Every read offset committed before the group changes, so that the phases' counts
        # are exact; the commit inside a revoke is tested in tests/ingest (offsets read
        # but not flushed); this tests the learner's side of a rebalance.
        wait_for(lambda: not any(c._unflushed or c._pending_offsets
                                 for c, _, _ in running.values()), 30, "offsets committed")

    def join(name: str) -> EventConsumer:
        settle()
        sink = LearnerSink(tmp_path / name, rows(), config)
        consumer = EventConsumer(settings, sink, broker.bootstrap)
        stop = threading.Event()
        thread = threading.Thread(target=consumer.run, kwargs={"should_stop": stop.is_set})
        thread.start()
        running[name] = (consumer, thread, stop)
        return consumer

    def leave(name: str, settled: bool = False) -> LearnerSink:
        if not settled:
            settle()
        consumer, thread, stop = running.pop(name)
        stop.set()
        thread.join()
        consumer.close()
        finished.append(consumer)
        return consumer.sink  # type: ignore[return-value]

    def produce(phase: EventFrames, owners: dict[str, int]) -> None:
        wait_for(lambda: {n: len(c._client.assignment()) for n, (c, _, _) in running.items()}
                 == owners, 60, f"the partitions split as {owners}")
        before = sum(c.counters.consumed for c in [*finished, *(r[0] for r in running.values())])
        with EventProducer(settings, broker.bootstrap) as producer:  # keyed by user
            producer.send(events_of(phase))
        total = before + sum(f.height for f in phase.values())
        wait_for(lambda: sum(c.counters.consumed for c, _, _ in running.values())
                 + sum(c.counters.consumed for c in finished) >= total, 60, "the phase read")

    try:
        join("a")
        produce(phases[0], {"a": 2})
        join("b")
        produce(phases[1], {"a": 1, "b": 1})
        leave("a")
        produce(phases[2], {"b": 2})
        join("a")
        produce(phases[3], {"a": 1, "b": 1})
        settle()
    finally:
        sinks = [leave(name, settled=True) for name in list(running)]
    consumed = sum(c.counters.consumed for c in finished)
    assert consumed == sum(f.height for f in frames.values())  # not one event read twice
    assert all(c.counters.reconciles and c.counters.duplicates == 0 for c in finished)
    assert all(s.pending == 0 and s.checkpoint().offsets == {} for s in sinks)
    assert sum(s.counters.impressions_revoked for s in sinks) == 1200
    _merged_equals_single(tmp_path, sinks, frames, _straddling(frames, cuts), config)


# --------------------------------------------------------------- against the broker


def _learn_process(settings: Settings, bootstrap: str, state: Path, group: str, *extra: str
                   ) -> subprocess.Popen[bytes]:
    env = {**os.environ,
           "CLICKLOOP_KAFKA_TOPIC": settings.kafka.topic,
           "CLICKLOOP_KAFKA_DLQ_TOPIC": settings.kafka.dlq_topic,
           "CLICKLOOP_KAFKA_PARTITIONS": str(settings.kafka.partitions),
           # The broker lets a group form after about half of this: a shorter wait.
           "CLICKLOOP_KAFKA_SESSION_TIMEOUT_MS": "2000",
           "CLICKLOOP_INGEST_JOURNAL_DIR": settings.ingest.journal_dir,
           "CLICKLOOP_INGEST_FLUSH_MAX_EVENTS": "250",
           "CLICKLOOP_INGEST_POLL_MAX_RECORDS": "125"}
    return subprocess.Popen(
        [sys.executable, "-m", "serving.learn_cli", "--bootstrap", bootstrap,
         "--state", str(state), "--world", str(N_ITEMS), "--policy", "linucb",
         "--examination", ",".join(map(repr, CURVE)), "--window", "20",
         "--user-numeric", "age", "--user-categorical", "segment", "--hash-buckets", "4",
         "--group", group, "--quiet", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)


def _offset(state: Path) -> int:
    try:
        return sum(read_state(state).checkpoint.offsets.values())
    except (FileNotFoundError, LearnerStateError):
        return 0


@pytest.mark.kafka
def test_learner_killed_at_a_random_point_resumes_to_the_uninterrupted_state(
        broker: EmbeddedBroker, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory(kafka={"partitions": 1})  # one partition: one total order
    frames = stream(2000, seed=1)
    events = events_of(frames)
    with EventProducer(settings, broker.bootstrap) as producer:
        producer.send(events)
        producer.flush()
        assert producer.stats.acknowledged == len(events)
    state = tmp_path / "state"
    kill_at = random.Random(7).randrange(len(events) // 10, len(events) // 2)

    group = settings.kafka.group_id
    first = _learn_process(settings, broker.bootstrap, state, group)
    try:
        wait_for(lambda: _offset(state) >= kill_at, 60, f"a checkpoint past offset {kill_at}")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    at_kill = _offset(state)
    assert 0 < at_kill < len(events), "the learner finished before it could be killed"

    # The restart reads from the checkpoint's offsets whatever its group has committed; a
    # fresh group spares the wait for the killed member's session to expire.
    second = _learn_process(settings, broker.bootstrap, state, f"{group}-restart",
                            "--idle-exit", "1.5", "--drain")
    output = second.communicate(timeout=90)[0].decode()
    assert second.returncode == 0, output
    assert "impressions_applied" in output and "freshness_p99_s" in output
    resumed = read_state(state)
    # A learner that exits gives its partitions back (their offsets are the group's now).
    assert resumed.checkpoint.offsets == {}

    reference = LearnerSink(tmp_path / "reference", rows(),
                            LearnerConfig(policy="linucb", window_s=20.0))
    feed(reference, frames, chunks=1)
    reference.drain()
    expected = reference.policy_.state_dict()
    for name in ("A", "b", "A_inv"):
        torch.testing.assert_close(resumed.policy[name], expected[name], rtol=1e-6, atol=1e-6)
    assert int(resumed.policy["n_updates"]) == int(expected["n_updates"]) == 2000 * 5
    # Every impression applied once and every click joined once, across the kill.
    counts = reference.counters.as_dict()
    assert counts["impressions_applied"] == 2000
    assert counts["clicks_joined"] == frames["click"].height
    assert {**resumed.counters, "updates": 0} == {**counts, "updates": 0}


@pytest.mark.kafka
def test_two_learners_in_one_group_merge_into_the_learner_of_both_partitions(
        broker: EmbeddedBroker, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory(kafka={"partitions": 2})
    config = LearnerConfig(window_s=1e6)  # every click joins, whatever the partition skew
    sinks = [LearnerSink(tmp_path / f"learner{i}", rows(), config) for i in range(2)]
    consumers = [EventConsumer(settings, sink, broker.bootstrap) for sink in sinks]
    stop = threading.Event()
    threads = [threading.Thread(target=c.run, kwargs={"should_stop": stop.is_set})
               for c in consumers]
    for thread in threads:
        thread.start()
    frames = stream(2000, seed=2)
    events = events_of(frames)
    try:
        # Produce once the group has split the partitions, so none changes hands mid-join.
        wait_for(lambda: all(len(c._client.assignment()) == 1 for c in consumers), 60,
                 "the two learners to take one partition each")
        with EventProducer(settings, broker.bootstrap) as producer:  # keyed by user
            producer.send(events)
        wait_for(lambda: sum(c.counters.consumed for c in consumers) >= len(events), 60,
                 "every event consumed")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for consumer in consumers:
            consumer.close()
    for sink in sinks:
        sink.drain()
    applied = [sink.counters.impressions_applied for sink in sinks]
    assert min(applied) > 0 and sum(applied) == 2000
    assert sum(s.counters.clicks_joined for s in sinks) == frames["click"].height
    assert sum(s.counters.clicks_orphaned for s in sinks) == 0

    merged = DiagLinUCB.merged([sink.policy_ for sink in sinks])
    single = LearnerSink(tmp_path / "single", rows(), config)
    feed(single, frames, chunks=4)
    single.drain()
    for name in ("xx_", "xr_", "weight_"):
        torch.testing.assert_close(getattr(merged, name), getattr(single.policy_, name),
                                   rtol=1e-9, atol=1e-9)
    assert merged.n_updates_ == single.policy_.n_updates_ == 2000 * 5


# ---------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize(("flags", "message"), [
    (["--world", "10", "--examination", "1,2"],
     "error: --examination 1,2: 2.0 must be a probability in (0, 1]"),
    (["--items", "ITEMS", "--examination", "inverse:2"],
     "error: --items ITEMS: no numeric vector columns beside item_id"),
    (["--world", "10", "--idle-exit", "0"], "error: --idle-exit=0.0 must be > 0 seconds"),
    (["--world", "10", "--idle-exit", "nan"], "error: --idle-exit=nan must be a finite number"),
    (["--world", "10", "--epsilon", "0.2"],
     "error: --epsilon is for --policy epsilon-greedy, not diag-linucb"),
    (["--world", "10", "--policy", "epsilon-greedy", "--alpha", "2"],
     "error: --alpha is for the LinUCB policies, not epsilon-greedy"),
    (["--world", "10", "--device", "cuda:7"] if not torch.cuda.is_available() else
     ["--world", "10", "--device", "nowhere"], "error: --device "),
])
def test_learn_command_fails_with_one_error_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    from serving.learn_cli import main

    items_file = tmp_path / "items.csv"
    items_file.write_text("item_id,title\ni1,a hat\n")
    flags = [str(items_file) if f == "ITEMS" else f for f in flags]
    message = message.replace("ITEMS", str(items_file))
    code = main(["--bootstrap", "127.0.0.1:1", "--state", str(tmp_path / "s"), *flags])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines

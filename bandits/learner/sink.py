"""The online learner as an ingest :class:`~ingest.sink.Sink`: the consumer's exactly-once
machinery (start from the sink's checkpoint, commit only after a flush) carries over to the
model unchanged."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from bandits.learner.join import JoinCounters, JoinWindow
from bandits.learner.rows import TrainingRows
from bandits.learner.state import (
    STATE_FILE,
    LearnerState,
    LearnerStateError,
    read_state,
    write_state,
)
from bandits.policies import DiagLinUCB, EpsilonGreedy, LinUCB
from ingest.frames import EventFrames
from ingest.sink import Checkpoint, TopicPartition

LOCK_FILE = "_learner.lock"
POLICIES = ("diag-linucb", "linucb", "epsilon-greedy")


class LearnerLocked(RuntimeError):
    """Another learner holds the state folder."""


@dataclass(frozen=True)
class LearnerConfig:
    """``policy``: ``"diag-linucb"`` (statistics that merge across partitions),
    ``"linucb"`` or ``"epsilon-greedy"`` (the baseline: the same ridge statistics, served
    greedily with ``epsilon`` exploration); ``alpha`` (the LinUCB pair's), ``ridge``,
    ``epsilon`` (epsilon-greedy's): the policy's; ``window_s``, ``max_pending``: the join
    window (:class:`~bandits.learner.join.JoinWindow`); ``remember_ids``: how many
    recent event ids the checkpoint keeps to re-seed the consumer's deduplication;
    ``freshness_samples``: how many recent freshness values are kept for the percentiles;
    ``device``: where the policy's statistics live."""

    policy: Literal["diag-linucb", "linucb", "epsilon-greedy"] = "diag-linucb"
    alpha: float = 1.0
    ridge: float = 1.0
    epsilon: float = 0.1
    window_s: float = 300.0
    max_pending: int = 100_000
    remember_ids: int = 100_000
    freshness_samples: int = 100_000
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy={self.policy!r} must be one of {', '.join(POLICIES)}")
        for name in ("alpha", "ridge", "window_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not (value > 0 or (
                    name == "alpha" and value == 0)):
                raise ValueError(f"{name}={value!r} must be a number > 0"
                                 + (" (or 0)" if name == "alpha" else ""))
        if isinstance(self.epsilon, bool) or not isinstance(self.epsilon, int | float) \
                or not 0 <= self.epsilon <= 1:
            raise ValueError(f"epsilon={self.epsilon!r} must be a number in [0, 1]")
        for name in ("max_pending", "remember_ids", "freshness_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1")


class LearnerSink:
    """A :class:`~ingest.sink.Sink` that trains a bandit policy from the events stream.

    :meth:`write` buffers the consumer's frames. :meth:`flush` feeds them to the join
    window, applies the impressions whose window closed as one mini-batch update
    (``partial_fit`` of every shown slot: features from ``rows``, reward clicked, weight
    ``1 / examination``), and writes the policy state, the waiting impressions and clicks,
    the counters and the offsets covered to ``state_dir`` as one atomically replaced file
    (:mod:`bandits.learner.state`). Opening a folder that holds a checkpoint resumes from
    it, so a learner restarted after a crash, at any point, ends as one that never stopped.

    Several learners in one consumer group: when the consumer gives up partitions (a
    rebalance, or its close) it flushes and commits, then calls :meth:`revoke`, which
    applies every waiting impression with the clicks joined so far, forgets the offsets
    of the revoked partitions and checkpoints. The new owner starts at the committed offset,
    after those impressions, so no impression is applied twice: a later click of one of
    them reaches the new owner, which never saw the impression and counts it in
    ``clicks_orphaned``; ``impressions_revoked`` counts the impressions applied early. All
    waiting impressions go, not only the revoked partitions' (an impression does not record
    its partition): with the clients' default, eager, rebalancing every partition is
    revoked at every rebalance anyway, and under a cooperative one the kept partitions'
    later clicks are orphaned in the same counted way. A learner closed and started again
    resumes from its group's committed offsets (committed at the close); one killed keeps
    its offsets and resumes exactly from them; if another member read on in one of its
    partitions meanwhile, that member's events are read again (a limit of per-member
    checkpoints: only the group's committed offset is shared).

    One learner per folder at a time (an exclusive ``flock``). Learned: ``policy_``,
    ``window_`` (the join, with its counters); :meth:`freshness` reports how long after an
    impression's newest event (its own time or its latest joined click) the model held it.
    """

    def __init__(self, state_dir: str | os.PathLike[str], rows: TrainingRows,
                 config: LearnerConfig | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.rows = rows
        self.config = config or LearnerConfig()
        self.path = self.state_dir / STATE_FILE
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.state_dir / LOCK_FILE, "a+")  # noqa: SIM115
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise LearnerLocked(f"learner state {self.state_dir} is held by another "
                                "learner (one per folder)") from None
        cfg = self.config
        self.policy_: DiagLinUCB | LinUCB | EpsilonGreedy
        if cfg.policy == "epsilon-greedy":
            self.policy_ = EpsilonGreedy(rows.dim, epsilon=cfg.epsilon, ridge=cfg.ridge,
                                         device=cfg.device)
        else:
            policy_cls = DiagLinUCB if cfg.policy == "diag-linucb" else LinUCB
            self.policy_ = policy_cls(rows.dim, alpha=cfg.alpha, ridge=cfg.ridge,
                                      device=cfg.device)
        self.window_ = JoinWindow(cfg.window_s, cfg.max_pending)
        self._checkpoint = Checkpoint(None)
        self._recent = pl.DataFrame(schema={"event_id": pl.String})
        self._written: list[EventFrames] = []
        self._freshness: deque[float] = deque(maxlen=cfg.freshness_samples)
        self.last_update_s: float | None = None
        if self.path.exists():
            try:
                self._resume(read_state(self.path))
            except BaseException:
                self.close()
                raise

    # -- what a checkpoint must agree on ---------------------------------------------------
    def _shape(self) -> dict[str, object]:
        features = asdict(self.rows.features)
        features.pop("dtype")
        shape = {"policy": self.config.policy, "n_features": self.rows.dim,
                 "ridge": self.config.ridge, "item_dim": self.rows.items.dim,
                 "features": features,
                 # The reward correction: two curves in one model would mix two targets.
                 "examination": [float(v) for v in self.rows.examination],
                 "max_weight": self.rows.max_weight}
        return json.loads(json.dumps(shape))  # as a checkpoint reads it back: lists, not tuples

    def _resume(self, state: LearnerState) -> None:
        mine, saved = self._shape(), state.config.get("shape")
        if saved != mine:
            raise LearnerStateError(f"{self.path} was written by a learner with {saved}; this "
                                    f"one has {mine}: use another --state folder")
        self.policy_.load_state_dict(state.policy)
        self.window_.load(state.pending, state.clicked, state.watermark, state.counters)
        self._checkpoint = state.checkpoint
        self._recent = state.recent_ids

    # -- Sink -----------------------------------------------------------------------------
    def write(self, frames: EventFrames) -> None:
        self._written.append(frames)

    def flush(self, offsets: dict[TopicPartition, int], cluster_id: str | None) -> None:
        written, self._written = self._written, []
        if not written and not offsets:
            return
        impressions = _concat(written, "impression")
        clicks = _concat(written, "click")
        ids = [f["event_id"] for frames in written for f in frames.values() if f.height]
        if ids:
            self._recent = pl.concat([self._recent, pl.DataFrame(
                {"event_id": pl.concat(ids)})]).tail(self.config.remember_ids)
        self.window_.add(impressions, clicks)
        self._commit(*self.window_.take_due(), self._checkpoint.advanced(cluster_id, offsets))

    def drain(self) -> int:
        """Apply every waiting impression now (the end of a stream: no more clicks will
        come) and checkpoint; returns how many were applied."""
        taken, clicked = self.window_.take_due(everything=True)
        self._commit(taken, clicked, self._checkpoint)
        return taken.height

    def revoke(self, partitions: list[TopicPartition]) -> None:
        """The consumer gave up ``partitions`` (after a flush): apply every waiting
        impression and forget those partitions' offsets, durably (see the class doc)."""
        if not partitions:
            return
        checkpoint = self._checkpoint.without(partitions)
        if not self.window_.pending_.height and checkpoint is self._checkpoint:
            return
        taken, clicked = self.window_.take_due(everything=True)
        self.window_.counters_.impressions_revoked += taken.height
        self._commit(taken, clicked, checkpoint)

    def _commit(self, taken: pl.DataFrame, clicked: pl.DataFrame,
                checkpoint: Checkpoint) -> None:
        counters = self.window_.counters_
        if taken.height:
            x, reward, weight = self.rows.build(taken, clicked)
            self.policy_.partial_fit(x, reward, weight)
            counters.rows_updated += len(x)
            counters.rows_clicked += int((reward > 0).sum())
            counters.updates += 1
        self._checkpoint = checkpoint
        write_state(self.path, LearnerState(
            policy=self.policy_.state_dict(), pending=self.window_.pending_,
            clicked=self.window_.clicked_, recent_ids=self._recent,
            checkpoint=self._checkpoint, watermark=self.window_.watermark_,
            counters=counters.as_dict(),
            config={"shape": self._shape(), "alpha": self.config.alpha,
                    "examination": list(self.rows.examination)}))
        if taken.height:
            # The model holds these impressions once the state that has them is durable.
            now = time.time()
            self.last_update_s = now
            self._freshness.extend((now - taken["last_ts"].to_numpy()).tolist())

    def checkpoint(self) -> Checkpoint:
        return self._checkpoint

    def recent_event_ids(self, limit: int) -> list[str]:
        return self._recent["event_id"].tail(limit).to_list()

    def close(self) -> None:
        self._written = []
        if not self._lock.closed:
            self._lock.close()  # releases the flock

    # -- reports --------------------------------------------------------------------------
    @property
    def counters(self) -> JoinCounters:
        return self.window_.counters_

    @property
    def pending(self) -> int:
        return self.window_.pending_.height

    def freshness(self) -> dict[str, float]:
        """Seconds from an applied impression's newest event to the model update that holds
        it: p50, p99 and max over the last ``freshness_samples`` applied (NaN before any),
        and how many that is."""
        values = np.fromiter(self._freshness, dtype=np.float64)
        if not len(values):
            return {"n": 0, "p50_s": float("nan"), "p99_s": float("nan"),
                    "max_s": float("nan")}
        p50, p99 = np.percentile(values, [50, 99])
        return {"n": len(values), "p50_s": float(p50), "p99_s": float(p99),
                "max_s": float(values.max())}


def _concat(written: list[EventFrames], kind: str) -> pl.DataFrame | None:
    parts = [frames[kind] for frames in written if kind in frames and frames[kind].height]
    return pl.concat(parts) if parts else None


"""Where the consumer's batches are decoded, validated, deduplicated and written to the sink.

:class:`InlineStage` does it on the polling thread. :class:`ProcessStage` does it in a
second process, so the polling thread only fetches: with confluent-kafka, building the
client's message objects and our validating decode each cost about as much as the other
per message, and one Python thread cannot do both at the rate librdkafka delivers
(``benchmarks/ingest.py`` shows both stages against the raw client). A batch reaches the
process as its values joined with ``b"\\n"`` in a ring of shared-memory slots (one copy,
no pickling of messages); the process answers each batch with its rejected messages and
the number applied. The sink lives in the process, so it is given as a factory.

Both keep the same protocol: batches are :meth:`~ApplyStage.submit`-ted in poll order and
their :class:`Outcome` s come back in that order from :meth:`~ApplyStage.completed`; a
:meth:`~ApplyStage.flush` is a barrier that makes the sink durable with the offsets given.
"""

from __future__ import annotations

import logging
import mmap
import os
import tempfile
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import compress
from multiprocessing.connection import Connection
from typing import Any, Protocol

from ingest.child import Child, ChildError, Handler, serve
from ingest.codec import Rejected, decode_batch, decode_joined, unparsable
from ingest.dedupe import DedupeWindow
from ingest.events import Event
from ingest.settings import IngestSettings
from ingest.sink import Checkpoint, Sink, TopicPartition

log = logging.getLogger(__name__)

SinkFactory = Callable[[], Sink]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one submitted batch."""

    rejected: list[Rejected]
    applied: int


class ApplyStage(Protocol):
    def submit(self, values: list[bytes | None]) -> None:
        """Start on the next batch (may wait while earlier batches fill the stage)."""
        ...

    def completed(self, wait: bool) -> list[Outcome]:
        """Outcomes of submitted batches not reported yet, oldest first; with ``wait``,
        of all of them."""
        ...

    def flush(self, offsets: dict[TopicPartition, int], cluster_id: str | None) -> None:
        """The sink's :meth:`~ingest.sink.Sink.flush`, after every submitted batch."""
        ...

    def checkpoint(self) -> Checkpoint: ...

    def close(self) -> None: ...


class StageError(ChildError):
    """The apply process failed or died; its message carries the process's traceback."""


class InlineStage:
    """Each batch handled at once, on the calling thread (and, in the apply process, on its
    only thread)."""

    def __init__(self, sink: Sink, settings: IngestSettings) -> None:
        self.sink = sink
        self._max_bytes = settings.max_event_bytes
        self._window = DedupeWindow(settings.dedupe_window)
        self._window.seed(sink.recent_event_ids(settings.dedupe_window))
        self._done: list[Outcome] = []

    def submit(self, values: list[bytes | None]) -> None:
        self._apply(*decode_batch(values, self._max_bytes))

    def submit_joined(self, joined: bytes | memoryview, lengths: Sequence[int],
                      unparsed: dict[int, str]) -> None:
        """:meth:`submit` for a batch as the apply process receives it (see
        :func:`~ingest.codec.decode_joined`)."""
        self._apply(*decode_joined(joined, lengths, self._max_bytes, unparsed))

    def _apply(self, events: list[Event | None], rejected: list[Rejected]) -> None:
        """Drop the rejected and the events whose ids the window has seen; write the rest."""
        valid: list[Event] = [e for e in events if e is not None] if rejected \
            else events  # type: ignore[assignment]
        fresh = list(compress(valid, self._window.add_many([e.event_id for e in valid])))
        self.sink.write(fresh)
        self._done.append(Outcome(rejected, len(fresh)))

    def completed(self, wait: bool) -> list[Outcome]:
        done, self._done = self._done, []
        return done

    def flush(self, offsets: dict[TopicPartition, int], cluster_id: str | None) -> None:
        self.sink.flush(offsets, cluster_id)

    def checkpoint(self) -> Checkpoint:
        return self.sink.checkpoint()

    def close(self) -> None:
        pass


#: The shared-memory ring: batches in flight at once, and the bytes each may take (a
#: larger batch goes through the pipe instead). Pages are only used once touched.
SLOTS = 4
SLOT_BYTES = 16 * 1024 * 1024
_LENGTH_BYTES = array("L").itemsize


class ProcessStage:
    """Batches handled by a child process that owns the sink; see the module doc.

    The child (an :class:`ingest.child.Child`) dies with the consumer, so a consumer killed
    with SIGKILL leaves no child flushing the sink behind its successor.
    """

    def __init__(self, sink_factory: SinkFactory, settings: IngestSettings,
                 start_timeout_s: float = 120.0) -> None:
        self._max_bytes = settings.max_event_bytes
        shm_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, path = tempfile.mkstemp(prefix="clickloop-stage-", dir=shm_dir)
        try:
            os.ftruncate(fd, SLOTS * SLOT_BYTES)
            self._ring = mmap.mmap(fd, SLOTS * SLOT_BYTES)
            os.close(fd)
            self._free = list(range(SLOTS))
            self._in_flight: deque[int | None] = deque()
            self._done: list[Outcome] = []
            self._child = Child("ingest.stages", [path], "the apply process", StageError)
            self._child.send((sink_factory, settings))
            self._checkpoint: Checkpoint = self._receive("ready", start_timeout_s)[1]
        except BaseException:
            self.close()
            raise
        finally:
            os.unlink(path)  # both sides have it mapped; nothing is left behind

    @property
    def pid(self) -> int:
        """The apply process's id."""
        return self._child.pid

    def submit(self, values: list[bytes | None]) -> None:
        unparsed: dict[int, str] = {}
        try:
            lengths = array("L", map(len, values))  # type: ignore[arg-type]
            oversized = max(lengths, default=0) > self._max_bytes
        except TypeError:  # a null payload
            oversized = True
        if oversized:  # rare: reject before shipping, so the ring never holds 10 MB values
            for index, value in enumerate(values):
                if (reason := unparsable(value, self._max_bytes)) is not None:
                    unparsed[index] = reason
            values = [b"" if i in unparsed else v for i, v in enumerate(values)]
            lengths = array("L", map(len, values))  # type: ignore[arg-type]
        joined = b"\n".join(values)  # type: ignore[arg-type]
        # The lengths follow the values in the slot: the pipe carries only a few numbers.
        lengths_bytes = lengths.tobytes()
        size = len(joined) + len(lengths_bytes)
        if size <= SLOT_BYTES:
            while not self._free:
                self._receive_one(timeout_s=None)
            slot = self._free.pop()
            start = slot * SLOT_BYTES
            self._ring[start:start + len(joined)] = joined
            self._ring[start + len(joined):start + size] = lengths_bytes
            self._child.send(("batch", slot, len(joined), len(values), unparsed))
            self._in_flight.append(slot)
        else:
            self._child.send(("batch", None, len(joined), len(values), unparsed,
                              joined + lengths_bytes))
            self._in_flight.append(None)

    def completed(self, wait: bool) -> list[Outcome]:
        while self._in_flight and (wait or self._child.ready()):
            self._receive_one(timeout_s=None)
        done, self._done = self._done, []
        return done

    def flush(self, offsets: dict[TopicPartition, int], cluster_id: str | None) -> None:
        self._child.send(("flush", offsets, cluster_id))
        self._checkpoint = self._receive("flushed")[1]

    def checkpoint(self) -> Checkpoint:
        return self._checkpoint

    def close(self) -> None:
        if getattr(self, "_child", None) is not None:
            self._child.close(("close",))
        if getattr(self, "_ring", None) is not None:
            self._ring.close()

    # ------------------------------------------------------------------ replies

    def _receive(self, kind: str, timeout_s: float | None = None) -> tuple[Any, ...]:
        """Read replies until the one of ``kind``; batch outcomes on the way are kept."""
        while True:
            reply = self._receive_one(timeout_s)
            if reply[0] == kind:
                return reply

    def _receive_one(self, timeout_s: float | None) -> tuple[Any, ...]:
        reply = self._child.receive(timeout_s)
        if reply[0] == "done":
            _, slot, rejected, applied = reply
            expected = self._in_flight.popleft()
            assert expected == slot, "the apply process answered out of order"
            if slot is not None:
                self._free.append(slot)
            self._done.append(Outcome(rejected, applied))
        return reply


def _start(conn: Connection, args: list[str]) -> Handler:
    """The apply process: builds the sink, maps the ring, answers batches and flushes."""
    sink_factory, settings = conn.recv()
    fd = os.open(args[0], os.O_RDWR)
    ring = memoryview(mmap.mmap(fd, SLOTS * SLOT_BYTES))
    os.close(fd)
    stage = InlineStage(sink_factory(), settings)
    conn.send(("ready", stage.checkpoint()))

    def handle(request: tuple[Any, ...]) -> tuple[Any, ...]:
        if request[0] == "flush":
            stage.flush(request[1], request[2])
            return ("flushed", stage.checkpoint())
        slot, size, count, unparsed = request[1:5]  # a batch
        end = size + _LENGTH_BYTES * count
        data = memoryview(request[5]) if slot is None else \
            ring[slot * SLOT_BYTES:slot * SLOT_BYTES + end]
        stage.submit_joined(data[:size], data[size:end].cast("L"), unparsed)
        (outcome,) = stage.completed(wait=True)
        return ("done", slot, outcome.rejected, outcome.applied)

    return handle


if __name__ == "__main__":
    serve(_start)

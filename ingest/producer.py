"""Batched event producer that never drops an event when the broker is away.

Messages are sent in batches keyed by ``user_id`` (so a user's events share a partition and
stay in order). Whatever the broker does not acknowledge is appended to a local
:class:`~ingest.journal.Journal`; while the journal holds anything, new messages queue
behind it, and every flush first tries to drain it, oldest first. After a failure the
broker is left alone for a backoff that doubles up to ``max_backoff_s``, so an outage costs
one timeout, not one per batch. A full journal raises :class:`~ingest.journal.JournalFull`.

Delivery is at least once: a batch whose acknowledgement was lost is sent again, and the
consumer drops the copy by ``event_id``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ingest.codec import encode
from ingest.events import Event
from ingest.journal import Journal, Record
from ingest.settings import Settings
from ingest.transport import ProducerClient, ensure_topics, make_producer

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ProducerStats:
    acknowledged: int = 0
    spooled: int = 0
    drained: int = 0
    failures: int = 0


class EventProducer:
    """Send events (or pre-encoded messages) to one topic, spooling through outages."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        *,
        topic: str | None = None,
        partitions: int | None = None,
        journal_dir: str | None = None,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.topic = topic or settings.kafka.topic
        self.partitions = partitions or settings.kafka.partitions
        ingest = settings.ingest
        self.journal = Journal(journal_dir or ingest.journal_dir, ingest.journal_max_bytes)
        self.batch_size = ingest.producer_batch_size
        self.timeout_s = ingest.producer_timeout_s
        self.max_backoff_s = max_backoff_s
        self.stats = ProducerStats()
        self._buffer: list[Record] = []
        self._client: ProducerClient | None = None
        self._retry_at = 0.0
        self._backoff_s = 0.25

    # ------------------------------------------------------------------------ public API

    def send(self, events: Iterable[Event]) -> None:
        """Queue events; full batches are sent as they fill."""
        self.send_raw((e.user_id.encode(), encode(e), None) for e in events)

    def send_raw(self, records: Iterable[Record]) -> None:
        """Queue already-encoded messages (replay, dead letters, tests of bad input)."""
        for record in records:
            self._buffer.append(record)
            if len(self._buffer) >= self.batch_size:
                self.flush()

    def flush(self) -> ProducerStats:
        """Send everything queued; what the broker does not take goes to the journal."""
        batch, self._buffer = self._buffer, []
        if self.journal.pending:
            self.drain()
        if self.journal.pending:
            self._spool(batch)
        elif batch:
            self._deliver(batch)
        return self.stats

    def drain(self) -> int:
        """Send journaled messages, oldest first, until the journal is empty or sending fails."""
        drained = 0
        while self.journal.pending and self._connected():
            records = self.journal.peek(self.batch_size)
            failed = self._try_send(records)
            if failed is None:
                break
            # Only the unbroken prefix counts as delivered: the rest stays, in order.
            delivered = failed[0] if failed else len(records)
            self.journal.advance(delivered)
            drained += delivered
            if failed:
                self._failed("journal drain", len(records) - delivered)
                break
        self.stats.drained += drained
        return drained

    def close(self) -> None:
        self.flush()
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------------- internals

    def _deliver(self, batch: list[Record]) -> None:
        if not self._connected():
            self._spool(batch)
            return
        failed = self._try_send(batch)
        if failed is None:
            self._spool(batch)
            return
        self.stats.acknowledged += len(batch) - len(failed)
        if failed:
            self._failed("send", len(failed))
            self._spool([batch[i] for i in failed])

    def _spool(self, batch: Sequence[Record]) -> None:
        if batch:
            self.journal.append(batch)
            self.stats.spooled += len(batch)

    def _try_send(self, batch: Sequence[Record]
                  ) -> list[int] | None:
        """Indices not acknowledged, or None when the client itself failed."""
        assert self._client is not None
        try:
            return self._client.send_batch(self.topic, batch, self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - any client failure means "spool and retry"
            self._failed(f"send ({exc})", len(batch))
            return None

    def _connected(self) -> bool:
        if self._client is not None:
            return True
        if time.monotonic() < self._retry_at:
            return False
        try:
            ensure_topics(self.bootstrap, {self.topic: self.partitions}, self.timeout_s)
            self._client = make_producer(self.settings.kafka, self.bootstrap, self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - TransportError or any client failure
            self._failed(f"connect ({exc})", 0)
            return False
        self._backoff_s = 0.25
        return True

    def _failed(self, what: str, count: int) -> None:
        self.stats.failures += 1
        log.warning("producer %s failed for %d message(s) to %s; journaling", what, count,
                    self.bootstrap)
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - already failing; the journal has the data
                pass
            self._client = None
        self._retry_at = time.monotonic() + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, self.max_backoff_s)

"""Batched event producer that never drops an event when the broker is away.

Messages are batched keyed by ``user_id`` (a user's events share a partition and stay in
order). What the broker does not acknowledge goes to a local :class:`~ingest.journal.Journal`,
one per cluster under ``ingest.journal_dir``, which every flush first drains; new messages
queue behind it unless ``ordered=False`` (dead letters), where a record the broker refuses
moves to the journal's end instead. After a failure the broker is left alone for a backoff
doubling up to ``max_backoff_s``: an outage costs one timeout, not one per batch. Delivery is
at least once: a batch whose acknowledgement was lost is sent again, and the consumer drops
the copy by ``event_id``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import takewhile

from ingest.codec import encode
from ingest.events import Event
from ingest.journal import Entry, Journal, Record, open_journal
from ingest.settings import Settings
from ingest.transport import ProducerClient, ensure_topics, make_producer

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ProducerStats:
    acknowledged: int = 0
    spooled: int = 0
    drained: int = 0
    failures: int = 0


class Undelivered(RuntimeError):
    """Messages the broker did not take in time are still in the local journal."""


class EventProducer:
    """Send events (or pre-encoded messages) to one topic, spooling through outages; a given
    ``journal`` replaces the producer's own, to drain one written for another address."""

    def __init__(self, settings: Settings, bootstrap: str, *, topic: str | None = None,
                 partitions: int | None = None, journal_dir: str | None = None,
                 journal: Journal | None = None, ordered: bool = True,
                 max_backoff_s: float = 5.0) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.topic = topic or settings.kafka.topic
        self.partitions = partitions or settings.kafka.partitions
        ingest = settings.ingest
        self.journal = journal or open_journal(journal_dir or ingest.journal_dir, bootstrap,
                                               ingest.journal_max_bytes)
        self.ordered = ordered
        self.batch_size = ingest.producer_batch_size
        self.timeout_s = ingest.producer_timeout_s
        self.max_backoff_s = max_backoff_s
        self.stats = ProducerStats()
        self._buffer: list[Record] = []
        self._client: ProducerClient | None = None
        self._topics_made: set[str] = set()
        self._retry_at = 0.0
        self._backoff_s = 0.25

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
        self.drain()
        if batch and not (self.ordered and self.journal.pending):
            failed = self._send(self.topic, batch) if self._connected() else range(len(batch))
            self.stats.acknowledged += len(batch) - len(failed)
            batch = [batch[i] for i in failed]
        if batch:
            self.journal.append([Entry(self.topic, self.bootstrap, *r) for r in batch])
            self.stats.spooled += len(batch)
        return self.stats

    def drain(self) -> None:
        """One pass over the journal, oldest first, one topic per batch, until a backoff starts."""
        budget = self.journal.pending
        while budget and self._connected():
            peeked = self.journal.peek(min(self.batch_size, budget))
            entries = list(takewhile(lambda e: e.topic == peeked[0].topic, peeked))
            budget -= len(entries)
            failed = self._send(entries[0].topic, [(e.key, e.value, e.headers) for e in entries])
            if self.ordered:  # only the unbroken prefix is delivered: the rest stays, in order
                done = failed[0] if failed else len(entries)
                self.journal.advance(done)
            else:
                done = len(entries) - len(failed)
                self.journal.advance(len(entries), [entries[i] for i in failed])
            self.stats.drained += done

    def deliver(self, timeout_s: float | None = None, *, check: bool = False) -> int:
        """Flush, then keep draining (with the backoff) until the journal is empty or
        ``timeout_s`` (default ``ingest.deliver_timeout_s``) has passed. Returns how many
        messages it still holds; with ``check``, raises :class:`Undelivered` if any."""
        timeout_s = self.settings.ingest.deliver_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        self.flush()
        while self.journal.pending and self._retry_at < deadline:
            # The backoff after a failed attempt: nothing signals the broker's return.
            time.sleep(max(0.0, self._retry_at - time.monotonic()))
            self.drain()
        if check and self.journal.pending:
            raise Undelivered(
                f"{self.journal.pending:,} event(s) are spooled in {self.journal.directory}, not "
                f"taken by the broker at {self.bootstrap} within deliver_timeout_s={timeout_s:g};"
                " send them with `clickloop drain` (--bootstrap HOST:PORT if the broker moved)")
        return self.journal.pending

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._client is not None:
                self._client.close()
                self._client = None
            self.journal.close()

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, topic: str, batch: Sequence[Record]) -> list[int]:
        """Indices not acknowledged. A failure starts the backoff, unless ``ordered`` is off
        and the broker took the rest of the batch: then it is up and refuses these only."""
        assert self._client is not None
        kafka = self.settings.kafka
        # A drained record's topic may be another producer's; the DLQ topic has one partition.
        partitions = {kafka.dlq_topic: 1, self.topic: self.partitions}.get(topic, kafka.partitions)
        try:
            if topic not in self._topics_made:
                ensure_topics(self.bootstrap, {topic: partitions}, self.timeout_s)
                self._topics_made.add(topic)
            failed = self._client.send_batch(topic, batch, self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - any client failure means "spool and retry"
            log.warning("producer client failed on %s: %s", self.bootstrap, exc)
            failed = list(range(len(batch)))
        if failed:
            self.stats.failures += 1
            log.warning("the broker at %s did not take %d of %d message(s) to %s; journaling",
                        self.bootstrap, len(failed), len(batch), topic)
            if self.ordered or len(failed) == len(batch):
                self._back_off()
        return failed

    def _connected(self) -> bool:
        if self._client is None and time.monotonic() >= self._retry_at:
            try:
                self._client = make_producer(self.settings.kafka, self.bootstrap, self.timeout_s)
                self._backoff_s = 0.25
            except Exception as exc:  # noqa: BLE001 - TransportError or any client failure
                self.stats.failures += 1
                log.warning("producer cannot connect to %s: %s", self.bootstrap, exc)
                self._back_off()
        return self._client is not None

    def _back_off(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):  # already failing; the journal has the data
                self._client.close()
            self._client = None
        # A broker back at the same address may be a new, empty one.
        self._topics_made.clear()
        self._retry_at = time.monotonic() + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, self.max_backoff_s)

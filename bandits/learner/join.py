"""The learner's bounded impression-click join, by ``request_id``, in event time.

An impression waits in the window until the newest event time seen (the watermark) passes
its own time by ``window_s``, or until more than ``max_pending`` impressions wait (then the
oldest go first); it then leaves with the slots that were clicked, and every other shown
slot is a negative. A click joins when its impression is waiting, the clicked item was in
that impression's slate, and it came at most ``window_s`` after the impression; any other
click is counted and dropped: its impression was never seen or has already been applied
(``clicks_orphaned``), it came too late (``clicks_late``), or its item was not shown
(``clicks_off_slate``).

The join is the position-based reading of a slate (Joachims, Swaminathan and Schnabel,
"Unbiased learning-to-rank with biased feedback", WSDM 2017): every shown slot is a row, its
click divided by the examination propensity of its position (see
:class:`~bandits.learner.rows.TrainingRows`), which is why a slate is only applied once its
clicks can no longer come.

For a stream in event-time order, decisions depend on event times, not on how the stream was
cut into batches, so a learner restarted from a checkpoint joins exactly as one that ran
through. Out of order, they can depend on where the flushes fall: the watermark advances
once per flush, so a click that arrives after a later event has pushed the watermark past its
impression's window joins if both came in one flush and is orphaned otherwise (the same holds
for ``max_pending`` evictions). Skew between partitions is one such case: the watermark is
the newest time over every partition a learner reads, so a partition lagging behind the
others by more than ``window_s`` less the click delay can see its impressions applied before
their clicks arrive.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import polars as pl

from ingest.frames import SLOT

#: What waits: an impression's request, time, user, context and slots, and the time of
#: its newest event (its own, or a click joined to it).
PENDING_SCHEMA: dict[str, pl.DataType] = {
    "request_id": pl.String, "ts": pl.Float64, "user_id": pl.String, "context": pl.String,
    "slots": pl.List(SLOT), "last_ts": pl.Float64}
CLICKED_SCHEMA: dict[str, pl.DataType] = {"request_id": pl.String, "item_id": pl.String}


@dataclass(slots=True)
class JoinCounters:
    """What the join did with what it was given (over the learner's whole life: the
    counters travel in its checkpoint). ``impressions_revoked``: of those applied, how many
    went before their window closed because the learner gave up partitions
    (:meth:`~bandits.learner.sink.LearnerSink.revoke`)."""

    impressions_seen: int = 0
    impressions_duplicate: int = 0
    impressions_applied: int = 0
    impressions_revoked: int = 0
    clicks_seen: int = 0
    clicks_joined: int = 0
    clicks_orphaned: int = 0
    clicks_late: int = 0
    clicks_off_slate: int = 0
    rows_updated: int = 0
    rows_clicked: int = 0
    updates: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class JoinWindow:
    """The impressions waiting for their clicks (see the module doc).

    Hyper-parameters: ``window_s`` (event-time seconds an impression waits), ``max_pending``
    (the most impressions that wait). State: ``pending_`` (:data:`PENDING_SCHEMA`),
    ``clicked_`` (the distinct clicked (request, item) pairs of waiting impressions),
    ``watermark_`` (the newest event time seen), ``counters_``.
    """

    def __init__(self, window_s: float, max_pending: int) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s={window_s!r} must be > 0")
        if max_pending < 1:
            raise ValueError(f"max_pending={max_pending!r} must be >= 1")
        self.window_s = float(window_s)
        self.max_pending = int(max_pending)
        self.pending_ = pl.DataFrame(schema=PENDING_SCHEMA)
        self.clicked_ = pl.DataFrame(schema=CLICKED_SCHEMA)
        self.watermark_ = float("-inf")
        self.counters_ = JoinCounters()

    def add(self, impressions: pl.DataFrame | None, clicks: pl.DataFrame | None) -> None:
        """Take new impressions, then join new clicks (an impression and its clicks may
        arrive in the same call)."""
        counters = self.counters_
        if impressions is not None and impressions.height:
            counters.impressions_seen += impressions.height
            fresh = (impressions.unique("request_id", keep="first", maintain_order=True)
                     .join(self.pending_.select("request_id"), on="request_id", how="anti")
                     .select("request_id", "ts", "user_id", "context", "slots",
                             last_ts="ts"))
            counters.impressions_duplicate += impressions.height - fresh.height
            self.pending_ = pl.concat([self.pending_, fresh.cast(PENDING_SCHEMA)])
            self.watermark_ = max(self.watermark_, float(impressions["ts"].max()))
        if clicks is not None and clicks.height:
            self._join(clicks)
            self.watermark_ = max(self.watermark_, float(clicks["ts"].max()))

    def _join(self, clicks: pl.DataFrame) -> None:
        counters = self.counters_
        counters.clicks_seen += clicks.height
        clicks = clicks.select("request_id", "item_id", "ts").with_row_index("_click")
        waiting = clicks.join(self.pending_.select("request_id", imp_ts="ts"),
                              on="request_id", how="inner")
        counters.clicks_orphaned += clicks.height - waiting.height
        in_time = waiting.filter(pl.col("ts") - pl.col("imp_ts") <= self.window_s)
        counters.clicks_late += waiting.height - in_time.height
        shown = (self.pending_.join(in_time.select("request_id").unique(), on="request_id",
                                    how="semi")
                 .select("request_id", pl.col("slots").list.eval(
                     pl.element().struct.field("item_id")).alias("item_id"))
                 .explode("item_id").unique())
        joined = in_time.join(shown, on=["request_id", "item_id"], how="semi")
        counters.clicks_off_slate += in_time.height - joined.height
        counters.clicks_joined += joined.height
        if not joined.height:
            return
        self.clicked_ = pl.concat([self.clicked_, joined.select(list(CLICKED_SCHEMA))]
                                  ).unique(maintain_order=True)
        newest = joined.group_by("request_id").agg(click_ts=pl.col("ts").max())
        self.pending_ = (self.pending_.join(newest, on="request_id", how="left",
                                               maintain_order="left")
                         .with_columns(last_ts=pl.max_horizontal("last_ts", "click_ts"))
                         .drop("click_ts"))

    def take_due(self, everything: bool = False) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Remove and return the impressions whose window has closed (all of them with
        ``everything``, at the end of a stream) and their clicked (request, item) pairs."""
        pending = self.pending_
        if everything:
            due = pl.Series(values=[True] * pending.height, dtype=pl.Boolean)
        else:
            due = pending["ts"] < self.watermark_ - self.window_s
            excess = pending.height - int(due.sum()) - self.max_pending
            if excess > 0:
                # The oldest of those still inside the window, by time then arrival.
                order = (pending.with_row_index("_row").filter(~due)
                         .sort("ts", "_row")["_row"].head(excess))
                due = due.scatter(order, True)
        taken, self.pending_ = pending.filter(due), pending.filter(~due)
        clicked = self.clicked_.join(taken.select("request_id"), on="request_id", how="semi")
        self.clicked_ = self.clicked_.join(taken.select("request_id"), on="request_id",
                                           how="anti")
        self.counters_.impressions_applied += taken.height
        return taken, clicked

    def load(self, pending: pl.DataFrame, clicked: pl.DataFrame, watermark: float,
             counters: dict[str, int]) -> None:
        """Restore what a checkpoint saved."""
        self.pending_ = pending.select(list(PENDING_SCHEMA)).cast(PENDING_SCHEMA)
        self.clicked_ = clicked.select(list(CLICKED_SCHEMA)).cast(CLICKED_SCHEMA)
        self.watermark_ = float(watermark)
        self.counters_ = JoinCounters(**{k: int(v) for k, v in counters.items()
                                         if k in JoinCounters.__slots__})

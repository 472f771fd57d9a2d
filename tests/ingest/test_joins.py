from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from ingest.events import Click, Dwell, Impression, Reaction, Slot
from ingest.frames import split_events
from ingest.joins import expand_context, join_log
from ingest.logstore import ParquetLogStore


def _store(tmp_path: Path) -> Path:
    store = ParquetLogStore(tmp_path)
    shown = [Slot("a", 1, 3.0, 0.5), Slot("b", 2, 2.0, 0.25), Slot("c", 3, 1.0, 0.125)]
    store.write(split_events([
        Impression(event_id="i1", ts=100.0, user_id="u", request_id="r1", policy="pol",
                   variant="B", query="boots", slots=shown),
        # The same impression delivered twice under another event id: counted once.
        Impression(event_id="i1-again", ts=100.0, user_id="u", request_id="r1",
                   policy="pol", variant="B", query="boots", slots=shown),
        Click(event_id="c1", ts=101.0, user_id="u", request_id="r1", item_id="b", position=2),
        Click(event_id="c2", ts=102.0, user_id="u", request_id="r1", item_id="b", position=2),
        Reaction(event_id="x1", ts=103.0, user_id="u", request_id="r1", item_id="b",
                 reaction="like"),
        Reaction(event_id="x2", ts=104.0, user_id="u", request_id="r1", item_id="b",
                 reaction="share"),
        Dwell(event_id="d1", ts=105.0, user_id="u", request_id="r1", item_id="b", seconds=4.0),
        Dwell(event_id="d2", ts=106.0, user_id="u", request_id="r1", item_id="b", seconds=6.5),
        # Feedback on an impression that was never logged: no propensity, left out.
        Click(event_id="c3", ts=107.0, user_id="u", request_id="r-unknown", item_id="z",
              position=1),
    ]))
    store.flush({}, None)
    store.close()
    return tmp_path


def test_one_row_per_shown_slot_with_feedback_and_negatives(tmp_path: Path) -> None:
    rows = join_log(_store(tmp_path)).sort("position").collect()
    assert rows.height == 3
    assert rows["item_id"].to_list() == ["a", "b", "c"]
    assert rows["propensity"].to_list() == [0.5, 0.25, 0.125]
    assert rows["clicked"].to_list() == [False, True, False]
    assert rows["clicks"].to_list() == [0, 2, 0]
    assert rows["reactions"].to_list() == [[], ["like", "share"], []]
    assert rows["dwell"].to_list() == [0.0, 10.5, 0.0]
    assert set(rows["variant"]) == {"B"} and set(rows["query"]) == {"boots"}
    assert rows.columns[:7] == ["request_id", "user_id", "ts", "item_id", "position", "score",
                                "propensity"]


def test_join_of_an_empty_store_is_an_empty_table(tmp_path: Path) -> None:
    rows = join_log(tmp_path).collect()
    assert rows.height == 0 and "propensity" in rows.columns
    assert rows.schema["clicked"] == pl.Boolean


def test_the_request_context_reaches_every_slot_and_expands_to_columns(tmp_path: Path
                                                                       ) -> None:
    context = {"user_feature_0": "abc", "user-item_affinity_3": 0.25}
    with ParquetLogStore(tmp_path) as store:
        store.write(split_events([
            Impression(event_id="i1", ts=1.0, user_id="u", request_id="r1", policy="pol",
                       slots=[Slot("a", 1, 1.0, 0.5), Slot("b", 2, 0.5, 0.5)],
                       context=context),
            Impression(event_id="i2", ts=2.0, user_id="v", request_id="r2", policy="pol",
                       slots=[Slot("c", 1, 1.0, 1.0)]),
        ]))
        store.flush({}, None)
    rows = join_log(tmp_path).sort("request_id", "position").collect()
    assert rows["context"].is_null().to_list() == [False, False, True]
    expanded = expand_context(rows)
    assert "context" not in expanded.columns
    assert expanded["user_feature_0"].to_list() == ["abc", "abc", None]
    assert expanded["user-item_affinity_3"].to_list() == [0.25, 0.25, None]
    assert expanded.schema["user-item_affinity_3"] == pl.Float64
    assert expanded.drop(context).equals(rows.drop("context"))
    clashing = rows.with_columns(context=pl.lit('{"user_id": "x"}'))
    with pytest.raises(ValueError, match=r"context keys \['user_id'\] clash"):
        expand_context(clashing)
    assert expand_context(clashing, prefix="context.")["context.user_id"].to_list() == [
        "x"] * 3

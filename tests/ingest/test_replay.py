from __future__ import annotations

import time
from pathlib import Path

import polars as pl
import pytest

from ingest.adapters.obd import read_obd
from ingest.codec import encode
from ingest.events import Click
from ingest.joins import join_log
from ingest.logstore import scan
from ingest.replay import ParquetTarget, ReplayError, open_log, replay


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


def test_replay_twice_into_the_same_store_adds_nothing(tmp_path: Path) -> None:
    log = _events_file(tmp_path, 1.0, 50)
    for _ in range(2):
        replay(open_log(log), ParquetTarget(tmp_path / "s"), rejects_path=tmp_path / "r")
    assert scan(tmp_path / "s", "click").select(pl.len()).collect().item() == 50


def test_scaled_event_time_paces_the_replay(tmp_path: Path) -> None:
    # 2 s of event time at speed 4 must take about 0.5 s; at full speed, far less.
    log = _events_file(tmp_path, 2.0, 200)
    started = time.perf_counter()
    replay(open_log(log), ParquetTarget(tmp_path / "a"), speed=4.0, pace_batch=10,
           rejects_path=tmp_path / "r")
    paced = time.perf_counter() - started
    assert 0.45 <= paced <= 3.0


def test_unknown_inputs_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ReplayError, match="does not exist"):
        open_log(tmp_path / "nothing.csv")
    with pytest.raises(ReplayError, match="not a clickloop log store"):
        open_log(tmp_path)
    with pytest.raises(ReplayError, match="speed=0"):
        replay(iter([]), ParquetTarget(tmp_path / "s"), speed=0)

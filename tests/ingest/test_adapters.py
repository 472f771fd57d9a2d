from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from ingest.adapters.generic import MappingError, generic_frames
from ingest.adapters.obd import obd_frames
from ingest.events import Click, Impression
from ingest.frames import events_of
from ingest.validation import validate_frame

MAPPING = {"user_id": "uid", "item_id": "item", "position": "rank", "ts": "time",
           "clicked": "click", "propensity": "p", "request_id": "req"}


def _log(tmp_path: Path, suffix: str) -> Path:
    frame = pl.DataFrame({
        "uid": ["a", "a", "b"], "item": [10, 11, 12], "rank": [2, 1, 1],
        "time": ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"],
        "click": [1, 0, 1], "p": [0.5, 0.5, 1.0], "req": ["q1", "q1", "q2"],
    })
    path = tmp_path / f"log{suffix}"
    {".csv": frame.write_csv, ".jsonl": frame.write_ndjson,
     ".parquet": frame.write_parquet}[suffix](path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_generic_log_becomes_impressions_and_clicks(tmp_path: Path, suffix: str) -> None:
    batches = list(generic_frames(_log(tmp_path, suffix), MAPPING))
    assert all(validate_frame(k, f)[1].height == 0 for b in batches for k, f in b.items())
    events = [e for b in batches for e in events_of(b)]
    impressions = [e for e in events if isinstance(e, Impression)]
    clicks = [e for e in events if isinstance(e, Click)]
    assert [i.request_id for i in impressions] == ["q1", "q2"]
    assert [(s.item_id, s.position, s.propensity) for s in impressions[0].slots] == [
        ("11", 1, 0.5), ("10", 2, 0.5)]
    assert [(c.request_id, c.item_id, c.position) for c in clicks] == [
        ("q1", "10", 2), ("q2", "12", 1)]
    assert impressions[0].ts == 1_767_225_600.0
    assert [type(e).__name__ for e in events] == ["Impression", "Click", "Impression", "Click"]


def test_missing_propensity_needs_an_explicit_deterministic_flag(tmp_path: Path) -> None:
    path = _log(tmp_path, ".csv")
    mapping = {k: v for k, v in MAPPING.items() if k != "propensity"}
    with pytest.raises(MappingError, match="no propensity column"):
        list(generic_frames(path, mapping))
    events = [e for b in generic_frames(path, mapping, assume_deterministic=True)
              for e in events_of(b)]
    impressions = [e for e in events if isinstance(e, Impression)]
    assert {s.propensity for i in impressions for s in i.slots} == {1.0}


def test_mapping_errors_name_the_field_and_column(tmp_path: Path) -> None:
    path = _log(tmp_path, ".csv")
    with pytest.raises(MappingError, match=r"user_id \(column 'user'\)"):
        list(generic_frames(path, {**MAPPING, "user_id": "user"}))
    with pytest.raises(MappingError, match="unknown fields"):
        list(generic_frames(path, {**MAPPING, "colour": "x"}))


def _obd_like(tmp_path: Path) -> Path:
    """A file in the Open Bandit Dataset layout, made here so the test needs no download."""
    folder = tmp_path / "random" / "men"
    folder.mkdir(parents=True)
    frame = pl.DataFrame({
        "": [0, 1, 2],
        "timestamp": ["2019-11-24 00:03:13.442536+00:00", "2019-11-24 00:03:36+00:00",
                      "2019-11-24 00:05:39+00:00"],
        "item_id": [14, 10, 31], "position": [3, 3, 1], "click": [0, 1, 0],
        "propensity_score": [0.0294, 0.0294, 0.0294],
        "user_feature_0": ["x", "x", "y"], "user_feature_1": ["z", "z", "z"],
        "user-item_affinity_0": [0.0, 1.0, 0.5],
    })
    frame.write_csv(folder / "men.csv")
    return folder / "men.csv"


def test_obd_rows_become_single_slot_impressions_with_logged_propensity(
        tmp_path: Path) -> None:
    events = [e for b in obd_frames(_obd_like(tmp_path)) for e in events_of(b)]
    impressions = [e for e in events if isinstance(e, Impression)]
    assert len(impressions) == 3 and len(events) == 4
    first = impressions[0]
    assert first.policy == "obd-random" and first.request_id == "obd-random-men-0"
    assert (first.slots[0].item_id, first.slots[0].position, first.slots[0].propensity) == (
        "14", 3, 0.0294)
    assert first.ts == pytest.approx(1574553793.442536)
    assert first.context == {"user_feature_0": "x", "user_feature_1": "z",
                             "user-item_affinity_0": 0.0}
    assert first.user_id == "ctx-x-z"
    assert impressions[0].user_id == impressions[1].user_id != impressions[2].user_id

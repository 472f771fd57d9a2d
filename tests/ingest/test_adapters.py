from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest

from ingest.adapters import LogError
from ingest.adapters.generic import MappingError, generic_frames
from ingest.adapters.obd import obd_frames
from ingest.codec import TOO_DEEP
from ingest.events import Click, Event, Impression
from ingest.frames import LogBatch, RejectedRow, events_of

MAPPING = {"user_id": "uid", "item_id": "item", "position": "rank", "ts": "time",
           "clicked": "click", "propensity": "p", "request_id": "req"}


def _events(batches: list[LogBatch]) -> list[Event]:
    return [e for b in batches for e in events_of(b.frames)]


def _rejected(batches: list[LogBatch]) -> list[RejectedRow]:
    return [r for b in batches for r in b.rejected]


def _write(frame: pl.DataFrame, path: Path) -> Path:
    {".csv": frame.write_csv, ".jsonl": frame.write_ndjson,
     ".parquet": frame.write_parquet}[path.suffix](path)
    return path


def _log(tmp_path: Path, suffix: str) -> Path:
    return _write(pl.DataFrame({
        "uid": ["a", "a", "b"], "item": [10, 11, 12], "rank": [2, 1, 1],
        "time": ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"],
        "click": [1, 0, 1], "p": [0.5, 0.5, 1.0], "req": ["q1", "q1", "q2"],
    }), tmp_path / f"log{suffix}")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_generic_log_becomes_impressions_and_clicks(tmp_path: Path, suffix: str) -> None:
    batches = list(generic_frames(_log(tmp_path, suffix), MAPPING))
    assert _rejected(batches) == [] and sum(b.read for b in batches) == 4
    events = _events(batches)
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
    events = _events(list(generic_frames(path, mapping, assume_deterministic=True)))
    impressions = [e for e in events if isinstance(e, Impression)]
    assert {s.propensity for i in impressions for s in i.slots} == {1.0}


def test_mapping_errors_name_the_field_and_column(tmp_path: Path) -> None:
    path = _log(tmp_path, ".csv")
    with pytest.raises(MappingError, match=r"user_id \(column 'user'\)"):
        list(generic_frames(path, {**MAPPING, "user_id": "user"}))
    with pytest.raises(MappingError, match="unknown fields"):
        list(generic_frames(path, {**MAPPING, "colour": "x"}))


def _obd_like(tmp_path: Path, position: str = "3") -> Path:
    """A file in the Open Bandit Dataset layout, made here so the test needs no download."""
    folder = tmp_path / "random" / "men"
    folder.mkdir(parents=True)
    frame = pl.DataFrame({
        "": [0, 1, 2],
        "timestamp": ["2019-11-24 00:03:13.442536+00:00", "2019-11-24 00:03:36+00:00",
                      "2019-11-24 00:05:39+00:00"],
        "item_id": [14, 10, 31], "position": ["3", position, "1"], "click": [0, 1, 0],
        "propensity_score": [0.0294, 0.0294, 0.0294],
        "user_feature_0": ["x", "x", "y"], "user_feature_1": ["z", "z", "z"],
        "user-item_affinity_0": [0.0, 1.0, 0.5],
    })
    frame.write_csv(folder / "men.csv")
    return folder / "men.csv"


def test_obd_rows_become_single_slot_impressions_with_logged_propensity(
        tmp_path: Path) -> None:
    events = _events(list(obd_frames(_obd_like(tmp_path))))
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


#: Every value as text, so that one can be bad whatever the format.
_TEXT_LOG = {"uid": ["a", "a", "b", "c"], "item": ["10", "11", "12", "13"],
             "rank": ["2", "1", "1", "1"],
             "time": ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", "1767225660",
                      "2026-01-01T00:02:00Z"],
             "click": ["1", "0", "true", "0"], "p": ["0.5", "0.5", "1", "0.25"],
             "req": ["q1", "q1", "q2", "q3"]}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
@pytest.mark.parametrize(("column", "value", "reason"), [
    ("time", "yesterday",
     "column 'time' (ts)='yesterday' is not a timestamp (epoch seconds or ISO 8601)"),
    ("click", "maybe", "column 'click' (clicked)='maybe' is not 0/1 or true/false"),
    ("rank", "x", "column 'rank' (position)='x' is not a 32-bit integer"),
    ("p", "abc", "column 'p' (propensity)='abc' is not a number"),
    ("time", None, "column 'time' (ts) is required"),
])
def test_a_bad_value_rejects_its_row_and_keeps_the_others(
        tmp_path: Path, suffix: str, column: str, value: str | None, reason: str) -> None:
    columns = {**_TEXT_LOG, column: [*_TEXT_LOG[column][:2], value, _TEXT_LOG[column][3]]}
    batches = list(generic_frames(_write(pl.DataFrame(columns), tmp_path / f"log{suffix}"),
                                  MAPPING))
    rejected = _rejected(batches)
    # The third data row: line 4 of a CSV (the header is line 1), line 3 of the others.
    assert [(r.line, r.reason) for r in rejected] == [(4 if suffix == ".csv" else 3, reason)]
    assert '"request_id":"q2"' in rejected[0].raw
    events = _events(batches)
    assert [(type(e).__name__, e.request_id) for e in events] == [
        ("Impression", "q1"), ("Click", "q1"), ("Impression", "q3")]
    assert sum(b.read for b in batches) == len(events) + 1


#: Request q1 shows three slots; a value is made bad on its third row (line 4 of a CSV).
_SLATE_LOG = {"uid": ["a", "a", "a", "b"], "item": ["10", "11", "12", "13"],
              "rank": ["1", "2", "3", "1"],
              "time": ["2026-01-01T00:00:00Z"] * 3 + ["2026-01-01T00:01:00Z"],
              "click": ["0", "1", "0", "1"], "p": ["0.5", "0.5", "0.5", "1"],
              "req": ["q1", "q1", "q1", "q2"]}
_NO_REQUEST_ID = {k: v for k, v in MAPPING.items() if k != "request_id"}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
@pytest.mark.parametrize(("mapping", "column", "value", "request_id", "kept"), [
    (MAPPING, "time", "yesterday", "q1", [("q2", 1)]),
    # Without request ids a request is (user_id, ts): its id is made of both.
    (_NO_REQUEST_ID, "click", "maybe", "a@1767225600.0", [("b@1767225660.0", 1)]),
    # A ts that does not parse leaves its row in no request: that row alone is rejected.
    (_NO_REQUEST_ID, "time", "yesterday", None, [("a@1767225600.0", 2), ("b@1767225660.0", 1)]),
])
def test_a_bad_row_rejects_every_row_of_its_request(
        tmp_path: Path, suffix: str, mapping: dict[str, str], column: str, value: str,
        request_id: str | None, kept: list[tuple[str, int]]) -> None:
    columns = {**_SLATE_LOG, column: [*_SLATE_LOG[column][:2], value, _SLATE_LOG[column][3]]}
    batches = list(generic_frames(_write(pl.DataFrame(columns), tmp_path / f"log{suffix}"),
                                  mapping))
    first = 2 if suffix == ".csv" else 1  # the header is line 1 of a CSV
    rejected = _rejected(batches)
    assert [r.line for r in rejected] == ([first, first + 1] if request_id else []) + [first + 2]
    assert [r.reason for r in rejected[:-1]] == [
        f"request_id={request_id!r} is rejected whole: its row at line {first + 2} was rejected"
    ] * (len(rejected) - 1)
    assert rejected[-1].reason.startswith(f"column {column!r}")
    events = _events(batches)
    assert [(e.request_id, len(e.slots)) for e in events if isinstance(e, Impression)] == kept
    assert sum(b.read for b in batches) == len(events) + len(rejected)


def test_bad_json_lines_are_rejected_with_their_line_numbers(tmp_path: Path) -> None:
    good = [b'{"uid": "a", "item": 1, "rank": 1, "time": 1767225600, "click": 1, "p": 0.5, '
            b'"req": "q%d", "extra": {"any": [1]}}' % i for i in range(3)]
    lines = [good[0], b"not json", b"", good[1], b"[" * 100_000,
             b'{"uid": {"name": "b"}, "item": 1, "rank": 1, "time": 1, "click": 0, "p": 1}',
             b"[1, 2]", good[2]]
    path = tmp_path / "log.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    batches = list(generic_frames(path, MAPPING))
    rejected = {r.line: r.reason for r in _rejected(batches)}
    assert sorted(rejected) == [2, 5, 6, 7]
    assert rejected[2].startswith("not valid JSON: ")
    assert rejected[5] == TOO_DEEP
    assert rejected[6] == ("column 'uid' (user_id)={'name': 'b'} must be a single value, "
                           "not an object or a list")
    assert rejected[7] == "not a JSON object: [1, 2]"
    assert [e.request_id for e in _events(batches) if isinstance(e, Impression)] == [
        "q0", "q1", "q2"]
    assert sum(b.read for b in batches) == 3 + 3 + 4


def test_a_nested_value_is_rejected_where_polars_would_read_it_as_text(tmp_path: Path) -> None:
    path = _write(pl.DataFrame(_TEXT_LOG), tmp_path / "log.jsonl")
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"uid":"a"', '"uid":["a"]')
    path.write_text("\n".join(lines) + "\n")
    batches = list(generic_frames(path, MAPPING))
    assert [(r.line, r.reason) for r in _rejected(batches)] == [
        (2, "column 'uid' (user_id)=['a'] must be a single value, not an object or a list")]
    assert {e.request_id for e in _events(batches)} == {"q1", "q2", "q3"}


def test_blank_lines_in_json_lines_keep_the_file_s_line_numbers(tmp_path: Path) -> None:
    path = _write(pl.DataFrame({**_TEXT_LOG, "rank": ["2", "1", "x", "1"]}), tmp_path / "l.jsonl")
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "", *lines[1:]]) + "\n\n \n")
    batches = list(generic_frames(path, MAPPING))
    assert [(r.line, r.reason) for r in _rejected(batches)] == [
        (4, "column 'rank' (position)='x' is not a 32-bit integer")]
    assert [e.request_id for e in _events(batches) if isinstance(e, Impression)] == ["q1", "q3"]


def test_an_empty_user_id_is_reported_as_such(tmp_path: Path) -> None:
    for suffix in (".csv", ".jsonl"):
        columns = {**_TEXT_LOG, "uid": ["a", "a", "", "c"]}
        path = _write(pl.DataFrame(columns), tmp_path / f"log{suffix}")
        if suffix == ".csv":  # an empty cell, not a quoted empty string
            path.write_text(path.read_text().replace('""', ""))
        rejected = _rejected(list(generic_frames(path, MAPPING)))
        assert {r.line for r in rejected} == {4 if suffix == ".csv" else 3}
        assert {r.reason for r in rejected} == {
            "user_id='' must be a non-empty string of at most 512 characters"}


def test_a_header_only_csv_holds_no_events(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(",".join(_TEXT_LOG) + "\n")
    batches = list(generic_frames(path, MAPPING))
    assert _events(batches) == [] and _rejected(batches) == []


def test_a_file_that_cannot_be_read_raises_one_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "log.csv").write_bytes(b"")
    (tmp_path / "log.jsonl").write_bytes(b"\n  \n")
    data = _log(tmp_path, ".parquet").read_bytes()
    (tmp_path / "log.parquet").write_bytes(data[: len(data) // 2])
    for name, what in [("log.csv", "the file is empty"), ("log.jsonl", "the file is empty"),
                       ("log.parquet", "not a readable parquet file")]:
        with pytest.raises(LogError, match=rf"{re.escape(name)}: {what}"):
            list(generic_frames(tmp_path / name, MAPPING))
    obd = _obd_like(tmp_path)
    obd.write_text(obd.read_text().replace("propensity_score", "propensity"))
    with pytest.raises(LogError, match=r"men\.csv: .*missing columns \['propensity_score'\]"):
        list(obd_frames(obd))
    assert issubclass(MappingError, LogError)


def test_a_bad_obd_row_is_rejected_with_its_csv_line(tmp_path: Path) -> None:
    batches = list(obd_frames(_obd_like(tmp_path, position="top")))
    assert [(r.line, r.reason) for r in _rejected(batches)] == [
        (3, "column 'position'='top' is not a 32-bit integer")]
    assert [e.request_id for e in _events(batches) if isinstance(e, Impression)] == [
        "obd-random-men-0", "obd-random-men-2"]

"""The apply stages, free of Kafka: the process stage does what the inline stage does."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from pathlib import Path

import msgspec
import polars as pl
import pytest

from ingest.codec import encode
from ingest.events import Impression, Slot
from ingest.logstore import ParquetLogStore, scan
from ingest.settings import IngestSettings
from ingest.stages import SLOT_BYTES, InlineStage, Outcome, ProcessStage, StageError
from tests.ingest.test_kafka_pipeline import good_events, malformed, wait_for

SETTINGS = IngestSettings(max_event_bytes=1024 * 1024, dedupe_window=10_000)


def _batches() -> list[list[bytes | None]]:
    """Twelve batches (more than the ring's slots) of good events, repeats, malformed
    messages, null payloads and a 10 MB payload."""
    raws: list[bytes | None] = [encode(e) for e in good_events(6000, seed=4)]
    raws += raws[100:400]  # repeats, seen in earlier batches
    raws += [malformed(i)[0] for i in range(495, 505)]  # i == 500 is the 10 MB one
    raws += [None, None]
    order = list(range(len(raws)))
    order.sort(key=lambda i: (i * 7919) % len(raws))
    shuffled = [raws[i] for i in order]
    return [shuffled[start:start + 529] for start in range(0, len(shuffled), 529)]


def _stored(root: Path) -> pl.DataFrame:
    return pl.concat([scan(root, kind).select("event_id", pl.lit(kind).alias("type")).collect()
                      for kind in ("impression", "click", "reaction", "dwell")]).sort("event_id")


def _run(stage: InlineStage | ProcessStage, batches: list[list[bytes | None]]) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for batch in batches:
        stage.submit(batch)
        outcomes += stage.completed(wait=False)
    outcomes += stage.completed(wait=True)
    stage.flush({("events", 0): 12_345}, "cluster-a")
    return outcomes


def test_process_stage_gives_the_outcomes_and_the_log_of_the_inline_stage(tmp_path: Path
                                                                           ) -> None:
    batches = _batches()
    inline = InlineStage(ParquetLogStore(tmp_path / "inline"), SETTINGS)
    expected = _run(inline, batches)
    stage = ProcessStage(functools.partial(ParquetLogStore, tmp_path / "process"), SETTINGS)
    try:
        got = _run(stage, batches)
        assert stage.checkpoint().offsets == {("events", 0): 12_345}
        assert stage.checkpoint().cluster_id == "cluster-a"
    finally:
        stage.close()
    assert got == expected
    assert sum(o.applied for o in got) == 6000
    reasons = [r.reason for o in got for r in o.rejected]
    assert len(reasons) == 12 and reasons.count("message has no value (null payload)") == 2
    assert sum("over max_event_bytes" in r for r in reasons) == 1
    assert _stored(tmp_path / "process").equals(_stored(tmp_path / "inline"))
    assert _stored(tmp_path / "process").height == 6000


def test_a_batch_larger_than_a_slot_goes_through_the_pipe(tmp_path: Path) -> None:
    big = "x" * 900_000
    events = [Impression(event_id=f"big-{i}", ts=1.0, user_id="u", request_id=f"r{i}",
                         policy="p", slots=[Slot("i", 1, 0.0, 0.5)], context={"blob": big})
              for i in range(20)]
    batch: list[bytes | None] = [encode(e) for e in events]
    assert sum(map(len, batch)) > SLOT_BYTES  # type: ignore[arg-type]
    stage = ProcessStage(functools.partial(ParquetLogStore, tmp_path / "log"), SETTINGS)
    try:
        stage.submit(batch)
        assert stage.completed(wait=True) == [Outcome([], 20)]
        stage.flush({}, None)
    finally:
        stage.close()
    assert scan(tmp_path / "log", "impression").select(pl.len()).collect().item() == 20


def test_a_sink_that_cannot_be_built_fails_with_its_traceback(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(StageError, match="(?s)the apply process failed.*NotADirectoryError"):
        ProcessStage(functools.partial(ParquetLogStore, tmp_path / "a-file" / "log"), SETTINGS)


def test_a_dead_apply_process_is_reported_not_waited_for(tmp_path: Path) -> None:
    stage = ProcessStage(functools.partial(ParquetLogStore, tmp_path / "log"), SETTINGS)
    try:
        os.kill(stage.pid, signal.SIGKILL)
        with pytest.raises(StageError, match="exited with code -9"):
            for batch in _batches():
                stage.submit(batch)
                stage.completed(wait=True)
    finally:
        stage.close()


_HOLD_A_STAGE = """
import functools, sys, time
from ingest.logstore import ParquetLogStore
from ingest.settings import IngestSettings
from ingest.stages import ProcessStage
stage = ProcessStage(functools.partial(ParquetLogStore, sys.argv[1]), IngestSettings())
print(stage.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_apply_process_dies_with_its_consumer(tmp_path: Path) -> None:
    """An unguarded script (no ``if __name__ == "__main__"``) can start a stage, and killing
    it with SIGKILL takes the apply process with it, so nothing keeps flushing the sink
    behind the consumer that replaces it."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_A_STAGE, str(tmp_path / "log")],
                              stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2])
    try:
        assert holder.stdout is not None
        child = int(holder.stdout.readline())
        assert _alive(child)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    wait_for(lambda: not _alive(child), 10, "the apply process to die with its parent")


def test_decode_process_needs_a_sink_factory(tmp_path: Path) -> None:
    from ingest.consumer import EventConsumer
    from ingest.settings import Settings

    settings = msgspec.structs.replace(
        Settings(), ingest=msgspec.structs.replace(SETTINGS, decode_process=True))
    with pytest.raises(ValueError, match="sink must be a picklable factory .* not the "
                                         "ParquetLogStore instance given"):
        EventConsumer(settings, ParquetLogStore(tmp_path / "log"), "127.0.0.1:1")

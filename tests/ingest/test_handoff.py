from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl

from ingest.frames import SCHEMAS
from ingest.handoff import Handoff, put_frames, shared_memory_root, sweep_stale, take_frames


def _frames() -> dict[str, pl.DataFrame]:
    slot = {"item_id": "a", "position": 1, "score": 0.5, "propensity": 0.25}
    impressions = pl.DataFrame(
        {"event_id": ["e1", "e2"], "ts": [1.0, 2.0], "user_id": ["u", "ü"],
         "request_id": ["r1", "r2"], "slots": [[slot], [slot, {**slot, "position": 2}]],
         "policy": ["p", "p"], "experiment": [None, "x"], "variant": [None, "b"],
         "query": [None, "shoes"], "context": ['{"k":1.0}', None]},
        schema=SCHEMAS["impression"])
    clicks = pl.DataFrame({"event_id": ["e3"], "ts": [3.0], "user_id": ["u"],
                           "request_id": ["r1"], "item_id": ["a"], "position": [1]},
                          schema=SCHEMAS["click"])
    return {"impression": impressions, "click": clicks}


def test_frames_come_back_as_they_went_and_their_files_go(tmp_path: Path) -> None:
    with Handoff(tmp_path) as handoff:
        files = put_frames(handoff.directory, "0", _frames())
        assert all(Path(f).parent == Path(handoff.directory) for f in files.values())
        taken = take_frames(files)
        assert taken.keys() == {"impression", "click"}
        for kind, frame in _frames().items():
            assert taken[kind].equals(frame) and taken[kind].schema == frame.schema
        assert not any(Path(f).exists() for f in files.values())
        put_frames(handoff.directory, "1", _frames())  # left behind: close removes it
    assert not Path(handoff.directory).exists()


def test_directories_of_dead_parents_are_swept(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = tmp_path / f"clickloop-handoff-{int(done.stdout)}-abc"
    live = tmp_path / f"clickloop-handoff-{os.getpid()}-def"
    unrelated = tmp_path / "clickloop-handoff-notapid"
    for directory in (dead, live, unrelated):
        directory.mkdir()
        (directory / "0-click.arrow").write_bytes(b"x")
    assert sweep_stale(tmp_path) == [dead]
    assert not dead.exists() and live.exists() and unrelated.exists()
    Handoff(tmp_path).close()  # a new parent sweeps too
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, unrelated.name])


def test_shared_memory_is_used_only_with_room_to_spare() -> None:
    assert shared_memory_root(min_free_bytes=1 << 62) is None  # no machine has 4 EiB free
    if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK | os.X_OK):
        assert shared_memory_root(min_free_bytes=0) == "/dev/shm"

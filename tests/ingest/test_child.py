from __future__ import annotations

import signal
from pathlib import Path

import pytest

from ingest.child import Child, ChildError, close_all
from ingest.handoff import Handoff


def _workers(log: Path, directory: str) -> list[Child]:
    return [Child("ingest.jsonl_log", [str(log), directory], f"worker {i}") for i in range(2)]


def test_close_all_lets_each_child_exit_on_its_request(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_bytes(b"")
    with Handoff(tmp_path) as handoff:
        children = _workers(log, handoff.directory)
        for child in children:
            child.send(("range", 0, 0, 0))
            assert child.receive(timeout_s=60)[:2] == ("validated", 0)
        close_all(children, ("close",))
        assert [c.exit_code for c in children] == [0, 0]


def test_a_failure_in_the_child_is_raised_with_its_traceback(tmp_path: Path) -> None:
    with Handoff(tmp_path) as handoff:
        (child, other) = _workers(tmp_path / "missing.jsonl", handoff.directory)
        child.send(("range", 0, 0, 10))
        with pytest.raises(ChildError, match="(?s)worker 0 failed.*FileNotFoundError"):
            child.receive(timeout_s=60)
        close_all([child, other], ("close",))
        assert (child.exit_code, other.exit_code) == (1, 0)


def test_close_all_without_a_request_kills(tmp_path: Path) -> None:
    with Handoff(tmp_path) as handoff:
        children = _workers(tmp_path / "log.jsonl", handoff.directory)
        close_all(children)
        assert [c.exit_code for c in children] == [-signal.SIGKILL] * 2

"""A command that sends events says so only once the broker has them; `clickloop drain` and
`clickloop status` deal with what it could not send. Run as a user runs them: subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ingest.broker import EmbeddedBroker, free_port
from ingest.codec import encode
from ingest.events import Click
from tests.ingest.test_producer import event_ids, read_topic

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.kafka


def clickloop(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "serving.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          # Wide, so that rich keeps the one error line on one line.
                          env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "1000",
                               **env})


@pytest.mark.parametrize(("command", "words"), [
    (("drain",), ("--bootstrap", "--deliver-timeout", "ingest.deliver_timeout_s")),
    (("status",), ("journal",)),
    (("replay",), ("--deliver-timeout",)),
    (("simulate",), ("--deliver-timeout",)),
])
def test_delivery_commands_explain_themselves(command: tuple[str, ...],
                                              words: tuple[str, ...]) -> None:
    result = clickloop(*command, "--help", env={}, cwd=ROOT)
    assert result.returncode == 0 and all(w in result.stdout for w in words), result.stdout


def test_replay_to_an_unreachable_broker_fails_until_drain_sends_the_events(
        broker: EmbeddedBroker, tmp_path: Path) -> None:
    topic = f"t{uuid.uuid4().hex[:10]}"
    journal_dir = tmp_path / "journal"
    env = {"CLICKLOOP_INGEST_JOURNAL_DIR": str(journal_dir), "CLICKLOOP_KAFKA_TOPIC": topic,
           "CLICKLOOP_KAFKA_DLQ_TOPIC": f"{topic}.dlq", "CLICKLOOP_INGEST_PRODUCER_TIMEOUT_S": "1",
           "CLICKLOOP_KAFKA_BOOTSTRAP": ""}
    events = [Click(event_id=f"e{i}", ts=1.7e9 + i, user_id=f"u{i % 9}", request_id=f"r{i}",
                    item_id="a", position=1 + i % 5) for i in range(300)]
    log = tmp_path / "events.jsonl"
    log.write_bytes(b"\n".join(map(encode, events)) + b"\n")

    nowhere = f"127.0.0.1:{free_port()}"  # nobody listens there
    replayed = clickloop("replay", str(log), "--to", "kafka", "--bootstrap", nowhere,
                         "--deliver-timeout", "1", "--quiet", env=env, cwd=tmp_path)
    assert replayed.returncode == 2, replayed.stderr
    error = [line for line in replayed.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1, replayed.stderr
    assert "300 event(s) are spooled in " + str(journal_dir) in error[0]
    assert "clickloop drain" in error[0] and "Traceback" not in replayed.stderr
    assert "sent" not in replayed.stderr  # no summary claims they left

    status = clickloop("status", env=env, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert f"cluster {nowhere}; 300 record(s)" in status.stdout
    assert f"topics {topic} (300)" in status.stdout

    drained = clickloop("drain", "--bootstrap", broker.bootstrap, "--deliver-timeout", "30",
                        env=env, cwd=tmp_path)
    assert drained.returncode == 0, drained.stderr
    assert f"sent 300 of 300 to {topic} on {broker.bootstrap}" in drained.stdout
    assert event_ids(read_topic(broker.bootstrap, topic, 300)) == {e.event_id for e in events}

    after = clickloop("status", env=env, cwd=tmp_path)
    assert after.returncode == 0 and "nothing pending" in after.stdout, after
    again = clickloop("drain", env=env, cwd=tmp_path)
    assert again.returncode == 0 and "nothing to send" in again.stdout, again


def test_drain_to_an_unreachable_broker_says_what_is_still_pending(tmp_path: Path) -> None:
    topic = f"t{uuid.uuid4().hex[:10]}"
    env = {"CLICKLOOP_INGEST_JOURNAL_DIR": str(tmp_path / "journal"),
           "CLICKLOOP_KAFKA_TOPIC": topic, "CLICKLOOP_INGEST_PRODUCER_TIMEOUT_S": "0.5"}
    log = tmp_path / "events.jsonl"
    log.write_bytes(encode(Click(event_id="e", ts=1.0, user_id="u", request_id="r",
                                 item_id="a", position=1)) + b"\n")
    nowhere = f"127.0.0.1:{free_port()}"
    clickloop("replay", str(log), "--to", "kafka", "--bootstrap", nowhere, "--deliver-timeout",
              "0", "--quiet", env=env, cwd=tmp_path)
    drained = clickloop("drain", "--deliver-timeout", "0", env=env, cwd=tmp_path)
    assert drained.returncode == 2
    assert f"sent 0 of 1 to {topic} on {nowhere}" in drained.stdout
    assert "still pending: 1 in " in drained.stderr and "clickloop drain" in drained.stderr


def test_simulate_and_consume_say_what_waits_locally_when_the_broker_is_away(
        tmp_path: Path) -> None:
    env = {"CLICKLOOP_INGEST_JOURNAL_DIR": str(tmp_path / "journal"),
           "CLICKLOOP_INGEST_PRODUCER_TIMEOUT_S": "0.5", "CLICKLOOP_KAFKA_BOOTSTRAP": ""}
    nowhere = f"127.0.0.1:{free_port()}"
    simulated = clickloop("simulate", "--to", "kafka", "--bootstrap", nowhere,
                          "--impressions", "50", "--deliver-timeout", "1", "--quiet",
                          env=env, cwd=tmp_path)
    assert simulated.returncode == 2, simulated.stderr
    (error,) = [line for line in simulated.stderr.splitlines() if line.startswith("error:")]
    assert "event(s) are spooled in" in error and "clickloop drain" in error
    consumed = clickloop("consume", "--bootstrap", nowhere, "--quiet", env=env, cwd=tmp_path)
    assert consumed.returncode == 2 and "Traceback" not in consumed.stderr
    assert consumed.stderr.startswith("error: ") and nowhere in consumed.stderr

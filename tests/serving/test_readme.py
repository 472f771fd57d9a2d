"""The README's command block runs as written, in order, against the test broker."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ingest.broker import EmbeddedBroker
from ingest.logstore import scan

ROOT = Path(__file__).resolve().parents[2]
#: Lines that set up the shell, not clickloop: the test supplies the venv and the broker.
SHELL_SETUP = (". .venv/bin/activate", "clickloop broker", "export CLICKLOOP_KAFKA_BOOTSTRAP")


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- readme-commands -->\n```sh\n(.*?)```", text, re.S)
    assert block, "README.md lost its marked command block"
    joined = block.group(1).replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        line = line.split("  #", 1)[0].strip()
        if line and not line.startswith(SHELL_SETUP):
            commands.append(shlex.split(line))
    return commands


@pytest.mark.kafka
@pytest.mark.slow
def test_the_readme_commands_run_as_written(broker: EmbeddedBroker, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    topic = f"readme{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "CLICKLOOP_KAFKA_BOOTSTRAP": broker.bootstrap,
           "CLICKLOOP_KAFKA_TOPIC": topic, "CLICKLOOP_KAFKA_DLQ_TOPIC": f"{topic}.dlq",
           "CLICKLOOP_KAFKA_GROUP_ID": f"{topic}-group", "PYTHONPATH": str(ROOT),
           "COLUMNS": "200"}
    commands = readme_commands()
    assert [c[1] for c in commands] == ["replay", "consume", "dlq", "status", "drain",
                                        "compact", "simulate"]
    outputs = {}
    for command in commands:
        assert command[0] == "clickloop"
        done = subprocess.run([sys.executable, "-m", "serving.cli", *command[1:]], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        outputs[command[1]] = done.stdout
    # 40 impressions of 3 slots reached the store; the extra row with a bad time did not.
    (reject,) = [json.loads(line) for line in
                 (tmp_path / "replay.rejects.jsonl").read_text().splitlines()]
    assert reject["line"] == 18 and "'yesterday' is not a timestamp" in reject["error"]
    impressions = scan(tmp_path / ".clickloop" / "log", "impression").collect()
    assert impressions.height == 40
    assert impressions["slots"].list.len().sum() == 3 * 40
    assert "nothing pending" in outputs["status"] and "nothing to send" in outputs["drain"]
    # The replay let no bad row by (rich wraps the title to the empty table's width).
    assert f"dead letters in {topic}.dlq (0)" in " ".join(outputs["dlq"].split())
    # The consumer compacted on its way out; the command finds the store and nothing to do.
    assert "nothing to compact" in outputs["compact"]
    assert scan(tmp_path / ".clickloop" / "sim", "impression").collect().height == 20_000

"""The learner's checkpoint: one safetensors file, replaced whole.

It holds the policy's tensors, the join window's waiting impressions and clicks and the
recent event ids (each a parquet file stored as a uint8 tensor), and in its metadata the
Kafka offsets they cover, the watermark, the counters and the settings that shaped the
features. One file written by :func:`ingest.atomic.write_atomic` means a crash leaves the
old (state, offsets) pair or the new one, never a state with offsets it does not match.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ingest.atomic import write_atomic
from ingest.sink import Checkpoint

STATE_FILE = "learner.safetensors"
FORMAT = "clickloop-learner/1"
_POLICY = "policy."
_FRAMES = ("pending", "clicked", "recent_ids")


class LearnerStateError(ValueError):
    """A state file that cannot be read, or was written for another learner."""


@dataclass
class LearnerState:
    """What a checkpoint holds (see the module doc)."""

    policy: dict[str, torch.Tensor]
    pending: pl.DataFrame
    clicked: pl.DataFrame
    recent_ids: pl.DataFrame
    checkpoint: Checkpoint
    watermark: float
    counters: dict[str, int]
    config: dict[str, Any] = field(default_factory=dict)


def _frame_tensor(frame: pl.DataFrame) -> torch.Tensor:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def write_state(path: Path, state: LearnerState) -> None:
    tensors = {_POLICY + name: value.detach().cpu().contiguous()
               for name, value in state.policy.items()}
    for name in _FRAMES:
        tensors[name] = _frame_tensor(getattr(state, name))
    metadata = {
        "format": FORMAT,
        "cluster_id": json.dumps(state.checkpoint.cluster_id),
        "offsets": json.dumps([[t, p, o] for (t, p), o in
                               sorted(state.checkpoint.offsets.items())]),
        # repr keeps every bit of a float, and -inf before the first event.
        "watermark": repr(state.watermark),
        "counters": json.dumps(state.counters),
        "config": json.dumps(state.config, sort_keys=True),
        "written_at": datetime.now(UTC).isoformat(),
    }
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def read_state(path: str | Path) -> LearnerState:
    """A checkpoint written by :class:`bandits.learner.LearnerSink` (a file, or the state
    folder that holds one)."""
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise LearnerStateError(f"{path} is not a learner checkpoint (format="
                                        f"{metadata.get('format')!r}, expected {FORMAT!r})")
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (OSError, RuntimeError, ValueError) as exc:
        if isinstance(exc, LearnerStateError | FileNotFoundError):
            raise
        raise LearnerStateError(f"{path}: cannot read the learner checkpoint: {exc}") from None
    frames = {name: pl.read_parquet(io.BytesIO(tensors[name].numpy().tobytes()))
              for name in _FRAMES}
    offsets = {(t, int(p)): int(o) for t, p, o in json.loads(metadata["offsets"])}
    return LearnerState(
        policy={name[len(_POLICY):]: value for name, value in tensors.items()
                if name.startswith(_POLICY)},
        pending=frames["pending"], clicked=frames["clicked"],
        recent_ids=frames["recent_ids"],
        checkpoint=Checkpoint(json.loads(metadata["cluster_id"]), offsets),
        watermark=float(metadata["watermark"]),
        counters=json.loads(metadata["counters"]),
        config=json.loads(metadata["config"]),
    )

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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bandits.learner.join import CLICKED_SCHEMA, PENDING_SCHEMA
from ingest.atomic import write_atomic
from ingest.sink import Checkpoint

STATE_FILE = "learner.safetensors"
FORMAT = "clickloop-learner/1"
_POLICY = "policy."
_FRAMES = ("pending", "clicked", "recent_ids")
_COLUMNS = {"pending": list(PENDING_SCHEMA), "clicked": list(CLICKED_SCHEMA),
            "recent_ids": ["event_id"]}


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
    frames = {name: _frame(path, tensors, name) for name in _FRAMES}
    offsets = _field(path, metadata, "offsets", _offsets)
    return LearnerState(
        policy={name[len(_POLICY):]: value for name, value in tensors.items()
                if name.startswith(_POLICY)},
        pending=frames["pending"], clicked=frames["clicked"],
        recent_ids=frames["recent_ids"],
        checkpoint=Checkpoint(_field(path, metadata, "cluster_id", _cluster_id), offsets),
        watermark=_field(path, metadata, "watermark", float),
        counters=_field(path, metadata, "counters", _counters),
        config=_field(path, metadata, "config", _object),
    )


def _field(path: Path, metadata: dict[str, str], name: str, parse: Callable[[str], Any]
           ) -> Any:
    """``parse(metadata[name])``, or a :class:`LearnerStateError` naming the file and the
    field (a checkpoint edited by hand or written by another version)."""
    if name not in metadata:
        raise LearnerStateError(f"{path}: the learner checkpoint has no field {name!r}")
    try:
        return parse(metadata[name])
    except (ValueError, TypeError) as exc:
        raise LearnerStateError(f"{path}: field {name}={metadata[name][:80]!r} is not "
                                f"valid: {exc}") from None


def _object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise TypeError(f"must be a JSON object, not {type(value).__name__}")
    return value


def _counters(text: str) -> dict[str, int]:
    value = _object(text)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
        raise TypeError("every counter must be an integer")
    return value


def _cluster_id(text: str) -> str | None:
    value = json.loads(text)
    if value is not None and not isinstance(value, str):
        raise TypeError(f"must be a string or null, not {type(value).__name__}")
    return value


def _offsets(text: str) -> dict[tuple[str, int], int]:
    value = json.loads(text)
    if not isinstance(value, list) or not all(
            isinstance(e, list) and len(e) == 3 and isinstance(e[0], str)
            and all(isinstance(n, int) and not isinstance(n, bool) for n in e[1:])
            for e in value):
        raise TypeError("must be a list of [topic, partition, offset]")
    return {(t, p): o for t, p, o in value}


def _frame(path: Path, tensors: dict[str, torch.Tensor], name: str) -> pl.DataFrame:
    if name not in tensors:
        raise LearnerStateError(f"{path}: the learner checkpoint has no field {name!r}")
    try:
        frame = pl.read_parquet(io.BytesIO(tensors[name].numpy().tobytes()))
    except Exception as exc:  # polars raises its own error types for a bad parquet
        raise LearnerStateError(f"{path}: field {name} is not a parquet frame: {exc}"
                                ) from None
    missing = [c for c in _COLUMNS[name] if c not in frame.columns]
    if missing:
        raise LearnerStateError(f"{path}: field {name} lacks the columns {missing}")
    return frame

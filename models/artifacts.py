"""Trained models on disk: safetensors weights plus JSON metadata, and a loader that refuses
anything it cannot vouch for (DESIGN.md, Artifacts).

An artifact is a folder holding two files:

- ``weights.safetensors``: the model's ``state_dict`` (tensors only: nothing executable is
  ever read back, no pickle, no ``torch.load``);
- ``metadata.json``: ``format``, ``format_version``, the model ``kind`` and its
  ``hyper_parameters``, the ``training_data`` range, the ``id_maps`` (index -> user and item
  id; recommenders), the ``feature_names`` and ``features`` (list rankers: what each input
  column means and how it is computed),
  ``metrics``, and the name, dtype and shape of every tensor, with the size and SHA-256 of
  the weights file.

Every model kind of :data:`models.recommenders.MODELS` and :data:`models.ultr.RANKERS` is
an artifact kind.

Each file is replaced atomically (:func:`ingest.atomic.write_atomic`), the weights first and
the metadata last. A reader that comes in between sees new weights under old metadata; their
checksums disagree and the load is refused, never served mixed, so a hot reload retries
rather than serving a half-written model.

:func:`load` takes only paths inside the artifact directory it is given, and every refusal is
an :class:`ArtifactError` naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from ingest.atomic import write_atomic
from models.data import InteractionDataModule
from models.recommenders import MODELS, FactorizationModel
from models.ultr import RANKERS, ListDataModule, ListRanker

FORMAT = "clickloop.model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
METADATA_FILE = "metadata.json"

PathLike = str | os.PathLike[str]
Model = FactorizationModel | ListRanker

#: Every model an artifact may hold, by kind.
KINDS: dict[str, type[FactorizationModel] | type[ListRanker]] = {**MODELS, **RANKERS}


class ArtifactError(ValueError):
    """An artifact that cannot be loaded: ``path`` is the file at fault."""

    def __init__(self, path: PathLike, problem: str) -> None:
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True)
class Artifact:
    """A loaded model (in eval mode) with its metadata."""

    model: Model
    metadata: dict[str, Any]
    path: Path

    @property
    def user_ids(self) -> list[str] | None:
        return (self.metadata.get("id_maps") or {}).get("user_ids")

    @property
    def item_ids(self) -> list[str] | None:
        return (self.metadata.get("id_maps") or {}).get("item_ids")

    @property
    def feature_names(self) -> list[str] | None:
        return self.metadata.get("feature_names")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _tensor_table(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    return {name: {"dtype": _dtype_name(t.dtype), "shape": list(t.shape)}
            for name, t in sorted(tensors.items())}


def _sizes(model: Model) -> dict[str, int]:
    """The length each id map or name list of ``model`` must have."""
    if isinstance(model, FactorizationModel):
        return {"user_ids": model.n_users, "item_ids": model.n_items}
    return {"feature_names": model.n_features}


def save(model: Model, path: PathLike, *,
         data: InteractionDataModule | ListDataModule | None = None,
         user_ids: Sequence[str] | None = None, item_ids: Sequence[str] | None = None,
         feature_names: Sequence[str] | None = None,
         features: Mapping[str, Any] | None = None,
         data_range: Mapping[str, Any] | None = None,
         metrics: Mapping[str, float] | None = None) -> Path:
    """Write ``model`` as an artifact in the folder ``path`` (created if needed) and return
    it. ``data`` supplies the id maps and the training data range unless they are given
    explicitly; ``feature_names`` name a list ranker's input columns and ``features``
    (JSON-able) says how they are computed, so a scorer can compute them again; ``metrics``
    are numbers such as a validation DCG."""
    folder = Path(path)
    if data is not None:
        user_ids = user_ids if user_ids is not None else getattr(data, "user_ids", None)
        item_ids = item_ids if item_ids is not None else getattr(data, "item_ids", None)
        data_range = data_range if data_range is not None else data.data_range
    kind = getattr(model, "kind", None)
    if KINDS.get(kind) is not type(model):  # type: ignore[arg-type]
        raise ValueError(f"{type(model).__name__} is not a model kind artifacts know "
                         f"({', '.join(sorted(KINDS))})")
    given = {"user_ids": user_ids, "item_ids": item_ids, "feature_names": feature_names}
    sizes = _sizes(model)
    for name, ids in given.items():
        if ids is not None and name not in sizes:
            raise ValueError(f"{name} do not apply to a {kind!r} model")
        if ids is not None and len(ids) != sizes[name]:
            raise ValueError(f"{name} has {len(ids)} entries; the model has {sizes[name]}")
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    blob = save_tensors(tensors)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "hyper_parameters": dict(model.hparams),
        "training_data": dict(data_range) if data_range is not None else None,
        "id_maps": ({"user_ids": list(user_ids) if user_ids is not None else None,
                     "item_ids": list(item_ids) if item_ids is not None else None}
                    if user_ids is not None or item_ids is not None else None),
        "feature_names": list(feature_names) if feature_names is not None else None,
        "features": dict(features) if features is not None else None,
        "metrics": {name: float(value) for name, value in (metrics or {}).items()},
        "tensors": _tensor_table(tensors),
        "weights": {"file": WEIGHTS_FILE, "bytes": len(blob),
                    "sha256": hashlib.sha256(blob).hexdigest()},
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    # allow_nan=False: a NaN metric would write a file that strict JSON readers reject.
    text = json.dumps(metadata, indent=1, allow_nan=False)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / WEIGHTS_FILE, blob)
    write_atomic(folder / METADATA_FILE, text.encode())
    return folder


def _inside(path: Path, root: Path) -> Path:
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise ArtifactError(path, f"outside the artifact directory {root}; only artifacts "
                                  "inside it are loaded")
    return resolved


def _read_metadata(file: Path, kind: str | None) -> dict[str, Any]:
    if not file.is_file():
        raise ArtifactError(file, "missing: not an artifact folder (no metadata)")
    try:
        metadata = json.loads(file.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtifactError(file, f"not valid JSON ({error}); the metadata is corrupted") \
            from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        found = metadata.get("format") if isinstance(metadata, dict) else type(metadata).__name__
        raise ArtifactError(file, f"format is {found!r}, not {FORMAT!r}: not a clickloop "
                                  "model artifact")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(file, f"format_version {metadata.get('format_version')!r}; this "
                                  f"loader reads version {FORMAT_VERSION}")
    found_kind = metadata.get("kind")
    if kind is not None and found_kind != kind:
        raise ArtifactError(file, f"kind is {found_kind!r}, expected {kind!r}")
    if found_kind not in KINDS:
        raise ArtifactError(file, f"kind {found_kind!r} is unknown (known: "
                                  f"{', '.join(sorted(KINDS))})")
    for key, expected in (("hyper_parameters", dict), ("tensors", dict), ("weights", dict)):
        if not isinstance(metadata.get(key), expected):
            raise ArtifactError(file, f"'{key}' is missing or not an object")
    for key in ("id_maps", "features"):
        if not isinstance(metadata.get(key), dict | None):
            raise ArtifactError(file, f"'{key}' must be an object or null")
    names = {"feature_names": metadata.get("feature_names"),
             **{f"id_maps.{k}": v for k, v in (metadata.get("id_maps") or {}).items()}}
    for key, value in names.items():
        if value is not None and not (isinstance(value, list)
                                      and all(isinstance(v, str) for v in value)):
            raise ArtifactError(file, f"'{key}' must be a list of strings or null")
    return metadata


def _read_weights(file: Path, expected: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise ArtifactError(file, "missing: the metadata names it but the file is not there")
    size = file.stat().st_size
    if size != expected.get("bytes"):
        # Checked before reading: a foreign or damaged file is never read whole.
        raise ArtifactError(file, f"is {size} bytes, the metadata says {expected.get('bytes')}:"
                                  " truncated, corrupted or replaced")
    blob = file.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != expected.get("sha256"):
        raise ArtifactError(file, f"SHA-256 {digest} does not match the metadata's "
                                  f"{expected.get('sha256')}: corrupted or replaced")
    try:
        return load_tensors(blob)
    except SafetensorError as error:
        raise ArtifactError(file, f"not a readable safetensors file ({error})") from None


def _check_tensors(file: Path, tensors: Mapping[str, torch.Tensor],
                   described: Mapping[str, Any], needed: Mapping[str, torch.Tensor]) -> None:
    found = _tensor_table(tensors)
    if found != described:
        missing = sorted(set(described) - set(found))
        extra = sorted(set(found) - set(described))
        differ = sorted(name for name in set(found) & set(described)
                        if found[name] != described[name])
        details = "; ".join(part for part in (
            f"missing {missing}" if missing else "",
            f"not in the metadata {extra}" if extra else "",
            *(f"{name} is {found[name]['dtype']}{found[name]['shape']}, the metadata says "
              f"{described[name].get('dtype')}{described[name].get('shape')}"
              for name in differ)) if part)
        raise ArtifactError(file, f"tensors do not match the metadata: {details}")
    wanted = _tensor_table(needed)
    if found != wanted:
        differ = sorted(name for name in set(found) | set(wanted)
                        if found.get(name) != wanted.get(name))
        raise ArtifactError(file, "tensors do not fit a model of the recorded "
                                  f"hyper-parameters: {', '.join(differ)}")


def load(path: PathLike, artifact_dir: PathLike, *, kind: str | None = None,
         device: str | torch.device = "cpu") -> Artifact:
    """The artifact in the folder ``path``, which must lie inside ``artifact_dir`` (after
    resolving links); ``kind``, when given, is the model kind the caller expects. Any
    problem is an :class:`ArtifactError` naming the file: a path outside the directory, a
    missing, corrupted or truncated file, metadata of another format, version or kind, or
    tensors whose names, dtypes or shapes differ from the metadata."""
    root = Path(artifact_dir).resolve()
    if not root.is_dir():
        raise ArtifactError(artifact_dir, "the artifact directory does not exist")
    folder = Path(path)
    _inside(folder, root)
    metadata_file = _inside(folder / METADATA_FILE, root)
    metadata = _read_metadata(metadata_file, kind)
    weights_name = metadata["weights"].get("file", WEIGHTS_FILE)
    if not isinstance(weights_name, str) or Path(weights_name).name != weights_name:
        raise ArtifactError(metadata_file, f"weights file {weights_name!r} must be a plain "
                                           "file name in the artifact folder")
    weights_file = _inside(folder / weights_name, root)
    tensors = _read_weights(weights_file, metadata["weights"])
    model_class = KINDS[metadata["kind"]]
    try:
        model = model_class(**metadata["hyper_parameters"])
    except (TypeError, ValueError) as error:
        raise ArtifactError(metadata_file, f"hyper-parameters do not fit a "
                                           f"{metadata['kind']!r} model: {error}") from None
    _check_tensors(weights_file, tensors, metadata["tensors"], model.state_dict())
    id_maps = metadata.get("id_maps") or {}
    for name, size in _sizes(model).items():
        ids, field = ((metadata.get(name), name) if name == "feature_names"
                      else (id_maps.get(name), f"id_maps.{name}"))
        if ids is not None and len(ids) != size:
            raise ArtifactError(metadata_file, f"{field} has {len(ids)} entries; the model "
                                               f"has {size}")
    model.load_state_dict(tensors, strict=True)
    model.eval()
    return Artifact(model.to(device), metadata, folder)

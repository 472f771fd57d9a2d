"""Saving and loading a :class:`VectorIndex`: FAISS's own index file plus JSON metadata.

Files in the folder: ``index.faiss`` (``faiss.write_index`` of the CPU index), ``ids.json`` (the
string <-> int64 id map in insertion order) and ``metadata.json`` (format, version, embedding
model, dim, metric, normalization, structure and operating point). Nothing is pickled. Loading
checks the model name and dim against what the caller expects and the id count against the
index's ``ntotal``; any mismatch is an :class:`IndexLoadError` naming the file and the problem.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import faiss

from ingest.atomic import write_atomic
from ranking.index.vector_index import VectorIndex

FORMAT = "clickloop.vector_index"
VERSION = 1
INDEX_FILE, IDS_FILE, META_FILE = "index.faiss", "ids.json", "metadata.json"


class IndexLoadError(ValueError):
    """A saved index that cannot be used as asked; the message names the file."""


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(payload, indent=1).encode())


def save_index(index: VectorIndex, folder: str | Path) -> Path:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    # ``index.index`` is always the CPU index.
    write_atomic(out / INDEX_FILE, lambda tmp: faiss.write_index(index.index, str(tmp)))
    _write_json(out / IDS_FILE, index.id_state())
    _write_json(out / META_FILE, {
        "format": FORMAT, "version": VERSION, "model": index.model, "dim": index.dim,
        "metric": "inner_product", "normalized": True, "structure": index.structure,
        "search_param": index.search_param, "operating_point": index.operating_point,
        "count": len(index), "ntotal": int(index.index.ntotal),
    })
    return out


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise IndexLoadError(f"{path}: missing")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexLoadError(f"{path}: corrupt JSON ({exc})") from exc
    if not isinstance(payload, dict):
        raise IndexLoadError(f"{path}: corrupt, expected a JSON object")
    return payload


def load_index(folder: str | Path, *, model: str | None = None, dim: int | None = None,
               device: str = "cpu") -> VectorIndex:
    src = Path(folder)
    meta_path, ids_path, index_path = src / META_FILE, src / IDS_FILE, src / INDEX_FILE
    meta = _read_json(meta_path)
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise IndexLoadError(f"{meta_path}: format={meta.get('format')!r} "
                             f"version={meta.get('version')!r}, expected {FORMAT!r} v{VERSION}")
    for key in ("model", "dim", "structure"):
        if key not in meta:
            raise IndexLoadError(f"{meta_path}: corrupt, field {key!r} missing")
    if meta.get("metric") != "inner_product" or meta.get("normalized") is not True:
        raise IndexLoadError(f"{meta_path}: metric={meta.get('metric')!r} "
                             f"normalized={meta.get('normalized')!r}, expected inner_product/true")
    if model is not None and meta["model"] != model:
        raise IndexLoadError(f"{meta_path}: model={meta['model']!r}, expected {model!r}")
    if dim is not None and meta["dim"] != dim:
        raise IndexLoadError(f"{meta_path}: dim={meta['dim']!r}, expected {dim!r}")
    if not index_path.is_file():
        raise IndexLoadError(f"{index_path}: missing")
    try:
        raw = faiss.read_index(str(index_path))
    except RuntimeError as exc:
        raise IndexLoadError(f"{index_path}: corrupt FAISS file ({exc})") from exc
    if raw.d != meta["dim"]:
        raise IndexLoadError(f"{index_path}: dim={raw.d}, but {META_FILE} says {meta['dim']}")
    state = _read_json(ids_path)
    try:
        result = VectorIndex(int(meta["dim"]), model=str(meta["model"]),
                             structure=str(meta["structure"]),
                             search_param=meta.get("search_param"), device=device,
                             faiss_index=raw, operating_point=meta.get("operating_point"))
        result.restore_ids(state)
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexLoadError(f"{ids_path}: corrupt id map ({exc})") from exc
    stored = len(result) + len(state.get("tombstones", []))
    if stored != raw.ntotal:
        raise IndexLoadError(f"{ids_path}: {stored} ids, but {INDEX_FILE} holds {raw.ntotal}")
    return result

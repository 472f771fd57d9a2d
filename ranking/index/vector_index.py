"""A FAISS index over L2-normalized float32 vectors, searched by inner product (cosine), with
stable string item ids.

Structures (FAISS ``index_factory`` strings): ``"Flat"`` (exact) and ``"HNSW32"`` are wrapped in
``IndexIDMap2``; IVF structures (``"IVF1024,Flat"``, ``"IVF1024,PQ16"``; Jegou, Douze, Schmid,
"Product quantization for nearest neighbor search", TPAMI 2011) keep the int64 ids themselves,
because ``IndexIDMap2`` compacts its id table on removal while IVF lists keep the old positions,
which would mislabel results. HNSW (Malkov & Yashunin, "Efficient and robust approximate nearest
neighbor search using hierarchical navigable small world graphs", TPAMI 2018) cannot delete:
removed vectors stay in the graph as tombstones that search skips. FAISS itself: Johnson, Douze,
Jegou, "Billion-scale similarity search with GPUs", 2019.

String ids map to int64 ids kept in this object; an updated item gets a fresh int64 id, so a
stale copy can never be reported under the item's name.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ranking.index.device import resolve_device, to_gpu
from ranking.index.validation import (
    IndexInputError,
    check_ids,
    check_positive_int,
    check_vectors,
)

MAX_ROUNDS = 64
#: The deepest search FAISS answers on a GPU; deeper rounds run on the CPU index.
GPU_MAX_K = 2048


def make_faiss_index(dim: int, structure: str) -> faiss.Index:
    """An empty inner-product FAISS index for ``structure``, ready to take int64 ids."""
    try:
        inner = faiss.index_factory(dim, structure, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise IndexInputError(f"structure={structure!r} must be a FAISS factory string: {exc}")
    if faiss.try_extract_index_ivf(inner) is not None:
        return inner
    return faiss.IndexIDMap2(inner)


class VectorIndex:
    """Inner product on normalized vectors, string ids, add/update/remove/search.

    ``search_param`` is the IVF ``nprobe`` or the HNSW ``efSearch`` (ignored for ``Flat``).
    """

    def __init__(self, dim: int, *, model: str, structure: str = "Flat",
                 search_param: int | None = None, device: str = "cpu",
                 faiss_index: faiss.Index | None = None,
                 operating_point: dict[str, Any] | None = None) -> None:
        self._dim = check_positive_int(dim, "dim")
        if not isinstance(model, str) or not model:
            raise IndexInputError(f"model={model!r} must be a non-empty string")
        self.model = model
        self.structure = structure
        self.index = faiss_index if faiss_index is not None else make_faiss_index(dim, structure)
        if self.index.d != self._dim:
            raise IndexInputError(f"faiss_index.d={self.index.d} must equal dim={self._dim}")
        self._ivf = faiss.try_extract_index_ivf(self.index)
        inner = faiss.downcast_index(self.index.index) if hasattr(self.index, "id_map") else None
        self._hnsw = inner if isinstance(inner, faiss.IndexHNSW) else None
        if search_param is None:
            search_param = 16 if self._ivf is not None else 64 if self._hnsw is not None else None
        self.search_param = (None if search_param is None
                             else check_positive_int(search_param, "search_param"))
        self.operating_point = dict(operating_point or {"structure": structure,
                                                        "search_param": self.search_param})
        self._str_to_int: dict[str, int] = {}
        self._int_to_str: dict[int, str] = {}
        self._tombstones: set[int] = set()
        self._names: np.ndarray | None = None  # built by _name_table, reset on any change
        self._next_id = 0
        self.device = resolve_device(device)
        if self._hnsw is not None:
            self.device = "cpu"  # FAISS has no GPU HNSW; the graph stays on the CPU
        self._gpu_index: faiss.Index | None = None

    # -- properties ---------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def ids(self) -> list[str]:
        """Live item ids in insertion order (an updated item keeps its place)."""
        return list(self._str_to_int)

    def __len__(self) -> int:
        return len(self._str_to_int)

    def __contains__(self, item: object) -> bool:
        return item in self._str_to_int

    @property
    def trained(self) -> bool:
        return bool(self.index.is_trained)

    # -- mutation -----------------------------------------------------------------------------
    def train(self, vectors: Any) -> None:
        """Train the structure (IVF centroids, PQ codebooks); a no-op for Flat and HNSW."""
        x = check_vectors(vectors, self._dim)
        if not self.index.is_trained:
            self.index.train(x)
        self._gpu_index = None
        self._names = None

    def add(self, ids: Sequence[str], vectors: Any) -> None:
        """Add new items; an id already present is a ValueError naming it."""
        names = check_ids(ids)
        x = check_vectors(vectors, self._dim, rows=len(names))
        for name in names:
            if name in self._str_to_int:
                raise IndexInputError(f"ids item {name!r} must be new (already in the index; "
                                      "use update)")
        if not self.index.is_trained:
            raise IndexInputError(f"structure={self.structure!r} must be trained before add")
        self._add(names, x)

    def _add(self, names: list[str], x: np.ndarray) -> None:
        if not names:
            return
        int_ids = np.arange(self._next_id, self._next_id + len(names), dtype=np.int64)
        self.index.add_with_ids(x, int_ids)
        self._next_id += len(names)
        for name, i in zip(names, int_ids.tolist()):
            self._str_to_int[name] = i
            self._int_to_str[i] = name
        self._gpu_index = None
        self._names = None

    def remove(self, ids: Sequence[str]) -> None:
        """Remove items; an unknown id is a ValueError naming it."""
        names = check_ids(ids)
        for name in names:
            if name not in self._str_to_int:
                raise IndexInputError(f"ids item {name!r} must be in the index (unknown id)")
        int_ids = np.array([self._str_to_int.pop(n) for n in names], dtype=np.int64)
        for i in int_ids.tolist():
            del self._int_to_str[i]
        self._drop(int_ids)

    def _drop(self, int_ids: np.ndarray) -> None:
        if len(int_ids) == 0:
            return
        if self._hnsw is not None:
            self._tombstones.update(int_ids.tolist())
        else:
            self.index.remove_ids(int_ids)
        self._gpu_index = None
        self._names = None

    def update(self, ids: Sequence[str], vectors: Any) -> None:
        """Replace the vectors of existing items (remove, then add under fresh int64 ids)."""
        names = check_ids(ids)
        x = check_vectors(vectors, self._dim, rows=len(names))
        for name in names:
            if name not in self._str_to_int:
                raise IndexInputError(f"ids item {name!r} must be in the index to update")
        old = np.array([self._str_to_int[n] for n in names], dtype=np.int64)
        self._drop(old)
        for i in old.tolist():
            del self._int_to_str[i]
        int_ids = np.arange(self._next_id, self._next_id + len(names), dtype=np.int64)
        self.index.add_with_ids(x, int_ids)
        self._next_id += len(names)
        for name, i in zip(names, int_ids.tolist()):
            self._str_to_int[name] = i  # keeps the dict position: insertion order is stable
            self._int_to_str[i] = name
        self._names = None

    # -- search -------------------------------------------------------------------------------
    def _searcher(self) -> faiss.Index:
        if self.device != "gpu":
            return self.index
        if self._gpu_index is None:
            self._gpu_index = to_gpu(self.index)
        return self._gpu_index

    def _params(self, scale: int, fetch: int) -> tuple[Any, bool]:
        """Search parameters widened by ``scale``, and whether they are already at their cap."""
        if self._ivf is not None:
            nlist = int(self._ivf.nlist)
            nprobe = min(nlist, (self.search_param or 1) * scale)
            return faiss.SearchParametersIVF(nprobe=nprobe), nprobe >= nlist
        if self._hnsw is not None:
            ef = max((self.search_param or 16) * scale, fetch)
            return faiss.SearchParametersHNSW(efSearch=ef), ef >= self.index.ntotal
        return None, True

    def search(self, queries: Any, k: int,
               exclude: Sequence[Collection[str]] | None = None
               ) -> tuple[list[list[str]], np.ndarray]:
        """Top-``k`` items per query row: (ids per row, scores (B, k), NaN-padded).

        ``exclude[b]`` holds ids that row ``b`` must not return (seen or blocked items; unknown
        ids are ignored). A row still gets ``k`` items whenever ``k`` are allowed: the search asks
        for ``k`` plus the largest exclusion first, then doubles the depth (and ``nprobe`` /
        ``efSearch``) for rows that came back short, until every row has ``k`` or the index is
        exhausted. An approximate structure can still return fewer for an unusual row.
        """
        k = check_positive_int(k, "k")
        q = check_vectors(queries, self._dim, field="queries")
        n_rows = q.shape[0]
        if exclude is not None:
            if isinstance(exclude, (str, bytes)) or len(exclude) != n_rows:
                raise IndexInputError(f"exclude={exclude!r:.60} must be a sequence with one "
                                      f"collection per query row ({n_rows})")
            banned = [{self._str_to_int[e] for e in row if e in self._str_to_int}
                      for row in exclude]
        else:
            banned = [set() for _ in range(n_rows)]
        out_ids: list[list[str]] = [[] for _ in range(n_rows)]
        scores = np.full((n_rows, k), np.nan, dtype=np.float32)
        total = int(self.index.ntotal)
        if total == 0 or n_rows == 0:
            return out_ids, scores
        widest = max((len(b) for b in banned), default=0)
        fetch = min(total, k + widest + len(self._tombstones))
        names = self._name_table()
        scale = 1
        pending = np.arange(n_rows)
        for _ in range(MAX_ROUNDS):
            params, at_cap = self._params(scale, fetch)
            index = self._searcher() if fetch <= GPU_MAX_K else self.index
            dist, lab = index.search(q[pending], fetch, params=params)
            keep = self._allowed(lab, [banned[row] for row in pending.tolist()])
            # The first k allowed of each row, in the order the index ranked them.
            rank = np.cumsum(keep, axis=1)
            keep &= rank <= k
            counts = keep.sum(axis=1)
            rows, cols = np.nonzero(keep)
            found = names[lab[rows, cols]].tolist()
            slot = rank[rows, cols] - 1
            done = 0
            for row, count in zip(pending.tolist(), counts.tolist()):
                out_ids[row] = found[done:done + count]
                done += count
            scores[pending[rows], slot] = dist[rows, cols]
            short = pending[counts < k]
            if not len(short) or (fetch >= total and at_cap):
                break
            pending = short
            fetch = min(total, fetch * 2)
            scale *= 2
        return out_ids, scores

    def _name_table(self) -> np.ndarray:
        """Item id by int64 id (None where the id is no longer live), as one array, so that a
        whole page of search results is named by one fancy index."""
        if self._names is None or len(self._names) != self._next_id:
            table = np.full(self._next_id, None, dtype=object)
            if self._int_to_str:
                table[np.fromiter(self._int_to_str, dtype=np.int64)] = list(
                    self._int_to_str.values())
            self._names = table
        return self._names

    def _allowed(self, labels: np.ndarray, banned: list[set[int]]) -> np.ndarray:
        """Which results may be returned: real (not -1), live (not a tombstone or a stale
        copy) and not excluded for their row."""
        live = self._name_table()
        keep = labels >= 0
        keep[keep] = np.not_equal(live[labels[keep]], None)
        for row, ban in enumerate(banned):
            if ban:
                keep[row] &= ~np.isin(labels[row], np.fromiter(ban, dtype=np.int64))
        return keep

    # -- persistence --------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        from ranking.index.storage import save_index

        return save_index(self, folder)

    @classmethod
    def load(cls, folder: str | Path, *, model: str | None = None, dim: int | None = None,
             device: str = "cpu") -> VectorIndex:
        from ranking.index.storage import load_index

        return load_index(folder, model=model, dim=dim, device=device)

    def id_state(self) -> dict[str, Any]:
        """The string <-> int64 id map as JSON-ready lists (insertion order)."""
        return {"ids": list(self._str_to_int), "int_ids": list(self._str_to_int.values()),
                "tombstones": sorted(self._tombstones), "next_id": self._next_id}

    def restore_ids(self, state: dict[str, Any]) -> None:
        ids, int_ids = list(state["ids"]), [int(i) for i in state["int_ids"]]
        if len(ids) != len(int_ids) or len(set(ids)) != len(ids):
            raise ValueError("ids and int_ids must have equal length and distinct ids")
        self._str_to_int = dict(zip(ids, int_ids))
        self._int_to_str = dict(zip(int_ids, ids))
        self._tombstones = {int(i) for i in state.get("tombstones", [])}
        self._next_id = int(state["next_id"])
        self._names = None
        self._name_table()  # built now, so the first search does not pay for it

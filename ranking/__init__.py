"""ranking: the contracts every policy speaks (``policy``: batch policies and their context;
``slate``: the per-request policy and its slate; ``api``: the ``POST /rank`` schema), IR
metrics and interleaving. The FAISS index and the retrieve-score-rerank pipeline come with
issue #13."""

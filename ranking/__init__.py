"""ranking: the contracts every policy speaks (``policy``: batch policies and their context;
``slate``: the per-request policy and its slate; ``api``: the ``POST /rank`` schema), IR
metrics and interleaving, the FAISS index (``index``) and the retrieve-score-rerank pipeline
(``pipeline``), whose encoders, scorers and rerankers are passed in."""

"""models: offline learners trained from the impression-click join.

Propensity estimation (``propensity``: regression-EM, intervention harvesting, item
exposure), the pre-batched data module (``data``), graded targets from clicks, reactions and
dwell (``targets``), recommenders from implicit feedback (``recommenders``: MF, MF-MSE, BPR,
Rel-MF, UBPR, and the noise-robust T-CE, R-CE, NBPO, PLD), unbiased learning to rank on slates
(``ultr``: IPS listwise and pairwise, DLA, query-item text features), one training routine
(``training``), artifacts (``artifacts``: safetensors plus JSON metadata) and artifacts as
the retrieval pipeline's scorers (``scorers``), text embeddings (``embeddings``:
all-MiniLM-L6-v2, cached on disk) and retrievers trained from clicks (``retrievers``: a
two-tower model, Counterfactual Rocchio). The query-rewrite LLM comes with issue #15.
"""

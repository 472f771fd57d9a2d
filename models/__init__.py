"""models: offline learners trained from the impression-click join.

Propensity estimation (``propensity``: regression-EM, intervention harvesting, item
exposure), the pre-batched data module (``data``), graded targets from clicks, reactions and
dwell (``targets``), recommenders from implicit feedback (``recommenders``: MF, MF-MSE, BPR,
Rel-MF, UBPR, and the noise-robust T-CE, R-CE, NBPO, PLD), unbiased learning to rank on slates
(``ultr``: IPS listwise and pairwise, DLA, query-item text features), one training routine
(``training``) and artifacts (``artifacts``: safetensors plus JSON metadata). Embeddings,
retrievers trained from clicks and the query-rewrite LLM come with issues #13 and #15.
"""

"""models: offline learners trained from the impression-click join.

Built so far: propensity estimation (``propensity``: regression-EM, intervention harvesting,
item exposure), the pre-batched data module (``data``), recommenders from implicit feedback
(``recommenders``: MF, BPR, Rel-MF) and their artifacts (``artifacts``: safetensors plus JSON
metadata). Denoising and unbiased learning-to-rank learners, embeddings, retrievers trained
from clicks and the query-rewrite LLM come with issues #12, #13 and #15.
"""

"""models: offline learners trained from the impression-click join: propensity estimation,
debiased and noise-robust recommenders and rankers, embeddings, retrievers trained from
clicks, and the query-rewrite LLM. Not built yet (issues #12, #13, #15)."""

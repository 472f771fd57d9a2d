"""The path from a request to a shown list: retrieve from the index, score, rerank, top k
(:class:`~ranking.pipeline.pipeline.Pipeline`), with the contracts of the parts plugged in
(:mod:`~ranking.pipeline.contracts`) and the default last step (score order)."""

from ranking.pipeline.contracts import (
    Candidates,
    CandidateScorer,
    Encoder,
    PipelineInputError,
    RankedItem,
    Request,
    Reranker,
    Stage,
)
from ranking.pipeline.pipeline import Pipeline, SearchIndex
from ranking.pipeline.rerankers import ScoreOrder, score_order

__all__ = ["CandidateScorer", "Candidates", "Encoder", "Pipeline", "PipelineInputError",
           "RankedItem", "Request", "Reranker", "ScoreOrder", "SearchIndex", "Stage",
           "score_order"]

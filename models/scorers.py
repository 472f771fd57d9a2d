"""Trained artifacts as the pipeline's score step (:class:`ranking.pipeline.CandidateScorer`).

- :class:`RecommenderScorer`: a recommender (MF, BPR, Rel-MF, ...) scores each candidate for
  the request's user, ``s(u, i)``;
- :class:`ListRankerScorer`: a search ranker (IPS listwise or pairwise, DLA) scores each
  candidate from the (query, title) features it was trained on, computed again from the
  parameters its artifact records and the catalog's titles.

A candidate the model cannot score (a user or item it never saw, a request without the query
a search ranker needs) gets NaN: the pipeline keeps it, in retrieval order, after the scored
ones. Scores are computed for the whole batch at once, one forward pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl
import torch

from models.artifacts import Artifact
from models.recommenders import FactorizationModel
from models.ultr import ListRanker, QueryItemFeatures
from ranking.pipeline import Candidates, CandidateScorer


def _lookup(keys: np.ndarray, table: Mapping[str, int]) -> np.ndarray:
    """Indices of ``keys`` (any shape, None allowed) in ``table``; -1 where absent."""
    flat = [table.get(k, -1) if k is not None else -1 for k in keys.ravel().tolist()]
    return np.asarray(flat, dtype=np.int64).reshape(keys.shape)


class RecommenderScorer:
    """``s(u, i)`` of a recommender artifact for each request's user and candidate."""

    def __init__(self, artifact: Artifact) -> None:
        if not isinstance(artifact.model, FactorizationModel):
            raise ValueError(f"artifact {artifact.path} holds a {artifact.metadata['kind']!r} "
                             "model, not a recommender")
        if artifact.user_ids is None or artifact.item_ids is None:
            raise ValueError(f"artifact {artifact.path} has no id maps: a recommender scorer "
                             "needs them to find users and items")
        self.model = artifact.model
        self.name = f"{artifact.metadata['kind']}:{artifact.path.name}"
        self.users_ = {u: i for i, u in enumerate(artifact.user_ids)}
        self.items_ = {v: i for i, v in enumerate(artifact.item_ids)}

    @torch.no_grad()
    def score(self, candidates: Candidates) -> np.ndarray:
        users = _lookup(np.array([r.user_id for r in candidates.requests], dtype=object),
                        self.users_)
        items = _lookup(candidates.item_ids, self.items_)
        known = (users[:, None] >= 0) & (items >= 0)
        logits = self.model.score(np.maximum(users, 0), np.maximum(items, 0)).cpu().numpy()
        return np.where(known, logits.astype(np.float64), np.nan)


class ListRankerScorer:
    """A search ranker's score of each (query, candidate) pair. ``items``: the catalog,
    an ``item_id`` and a ``title`` column plus the item feature columns the artifact names;
    the text statistics are learned again from its titles, so give the catalog the ranker was
    trained with (its artifact records the file's SHA-256)."""

    def __init__(self, artifact: Artifact, items: pl.DataFrame) -> None:
        if not isinstance(artifact.model, ListRanker):
            raise ValueError(f"artifact {artifact.path} holds a {artifact.metadata['kind']!r} "
                             "model, not a search ranker")
        recorded = artifact.metadata.get("features") or {}
        if recorded.get("extractor") != QueryItemFeatures.__name__:
            raise ValueError(f"artifact {artifact.path} does not record how its features are "
                             f"computed (features.extractor={recorded.get('extractor')!r})")
        params = dict(recorded["params"])
        params["ngram_range"] = tuple(params["ngram_range"])
        self.features_ = QueryItemFeatures(**params)
        columns = list(self.features_.item_features)
        missing = [c for c in ("item_id", "title", *columns) if c not in items.columns]
        if missing:
            raise ValueError(f"items has no column {missing[0]!r} (it has "
                             f"{sorted(items.columns)})")
        self.features_.fit(items["title"])
        if self.features_.feature_names_ != artifact.feature_names:
            raise ValueError(f"features {self.features_.feature_names_} differ from the "
                             f"artifact's {artifact.feature_names}")
        self.model = artifact.model
        self.name = f"{artifact.metadata['kind']}:{artifact.path.name}"
        self.items_ = {str(v): i for i, v in enumerate(items["item_id"].to_list())}
        self.titles_ = items["title"].cast(pl.String).fill_null("").to_numpy()
        self.values_ = items.select(columns).to_numpy().astype(np.float32) if columns else None

    @torch.no_grad()
    def score(self, candidates: Candidates) -> np.ndarray:
        rows = _lookup(candidates.item_ids, self.items_)
        queries = np.array([r.query for r in candidates.requests], dtype=object)
        usable = (rows >= 0) & np.array([q is not None for q in queries])[:, None]
        out = np.full(candidates.shape, np.nan)
        if not usable.any():
            return out
        b, n = np.nonzero(usable)
        item_rows = rows[b, n]
        values = self.values_[item_rows] if self.values_ is not None else None
        x = self.features_.transform(queries[b].tolist(), self.titles_[item_rows].tolist(),
                                     values)
        device = next(self.model.parameters()).device
        out[b, n] = self.model(torch.as_tensor(x, device=device)).cpu().numpy()
        return out


def artifact_scorer(artifact: Artifact, items: pl.DataFrame | None = None) -> CandidateScorer:
    """The scorer for any ranker artifact: a recommender, or a search ranker (which needs
    the catalog ``items``)."""
    if isinstance(artifact.model, FactorizationModel):
        return RecommenderScorer(artifact)
    if items is None:
        raise ValueError(f"artifact {artifact.path} is a search ranker: give the catalog "
                         "(item_id, title) it scores from")
    return ListRankerScorer(artifact, items)


__all__: Sequence[str] = ["ListRankerScorer", "RecommenderScorer", "artifact_scorer"]

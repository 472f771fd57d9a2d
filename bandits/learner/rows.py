"""Training rows from applied impressions: one per shown slot, with its features, reward and
importance weight, built for a whole mini-batch at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from bandits.context import ContextFeatures, ItemVectors
from bandits.slates import click_weights


def context_frame(impressions: pl.DataFrame, features: ContextFeatures) -> pl.DataFrame:
    """The declared context fields of each impression as columns. A missing numeric field
    reads as 0, so one incomplete event cannot stop the learner. JSON booleans read as
    ``True``/``False``, as :class:`ContextFeatures` spells them for Python values."""
    context = pl.col("context")
    columns = [context.str.json_path_match(f"$.{name}").cast(pl.Float64, strict=False)
               .fill_null(0.0).alias(name) for name in features.user_numeric]
    columns += [context.str.json_path_match(f"$.{name}").replace(
        {"true": "True", "false": "False"}).alias(name) for name in features.user_categorical]
    if not columns:
        return pl.DataFrame({"_": np.zeros(impressions.height)})  # only its height is read
    return impressions.select(columns)


@dataclass(frozen=True)
class TrainingRows:
    """Turns applied impressions into ``(x (n, d), reward (n,), weight (n,))``.

    ``features`` crosses the impression's context with each shown item's vector from
    ``items``; ``reward`` is ``click / examination[p - 1]`` for the slot's logged 1-based
    position p (:func:`bandits.slates.click_weights`; a position past the curve takes its
    last value; clipped at ``max_weight`` when given) and ``weight`` is 1. Under the
    position-based model ``E[click] = theta_p * relevance``, so the corrected reward is an
    unbiased estimate of the relevance and the ridge statistics regress on it (Joachims,
    Swaminathan and Schnabel, WSDM 2017: the correction falls on the clicks). Weighting
    every slot's row by ``1 / theta_p`` instead would cancel in the ridge solution for an
    item always shown at one position, and the model would still learn ``theta_p *
    relevance``.
    """

    features: ContextFeatures
    items: ItemVectors
    examination: Sequence[float]
    max_weight: float | None = None

    def __post_init__(self) -> None:
        curve = np.asarray(self.examination, dtype=np.float64)
        if curve.ndim != 1 or not len(curve) or not ((curve > 0) & (curve <= 1)).all():
            raise ValueError(f"examination={tuple(self.examination)!r} must be a non-empty "
                             "sequence of probabilities in (0, 1]")
        object.__setattr__(self, "examination", tuple(float(v) for v in curve))
        if self.max_weight is not None and not self.max_weight >= 1:
            raise ValueError(f"max_weight={self.max_weight!r} must be >= 1 or None")

    @property
    def dim(self) -> int:
        return self.features.dim(self.items.dim)

    def build(self, impressions: pl.DataFrame, clicked: pl.DataFrame
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows of every slot of ``impressions``, in impression then slot order;
        ``clicked`` holds the (request_id, item_id) pairs that were clicked."""
        slots = (impressions.select("request_id", "slots").with_row_index("_imp")
                 .with_columns(_slot=pl.int_ranges(pl.col("slots").list.len()))
                 .explode("slots", "_slot").drop_nulls("slots").unnest("slots"))
        slots = slots.join(clicked.with_columns(_clicked=pl.lit(True)),
                           on=["request_id", "item_id"], how="left", maintain_order="left")
        n_imp = impressions.height
        width = int(slots["_slot"].max()) + 1 if slots.height else 0
        imp = slots["_imp"].to_numpy().astype(np.int64)
        slot = slots["_slot"].to_numpy().astype(np.int64)
        # Impressions by slates padded to the widest: one lookup and one crossing for all.
        ids = np.full((n_imp, width), None, dtype=object)
        ids[imp, slot] = slots["item_id"].to_numpy()
        vectors, known = self.items.lookup(ids, self.features.dtype)
        x = self.features.transform(context_frame(impressions, self.features), vectors, known)
        x = x[torch.as_tensor(imp), torch.as_tensor(slot)]
        clicked_slot = torch.as_tensor(slots["_clicked"].fill_null(False).to_numpy(),
                                       dtype=torch.float64)
        position = slots["position"].to_numpy().astype(np.int64).clip(1, len(self.examination))
        correction = click_weights(torch.as_tensor(position), self.examination,
                                   max_weight=self.max_weight)
        return x, clicked_slot * correction, torch.ones_like(clicked_slot)

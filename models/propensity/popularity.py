"""Item exposure propensity from item popularity, for recommendation from implicit
feedback."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
from numpy.typing import ArrayLike

from models.propensity._base import Fitted, Log, check, clicks, columns


def popularity_propensity(positives: ArrayLike, eta: float = 0.5) -> np.ndarray:
    """``(n_i+ / max_j n_j+) ** eta`` for each item's count of positive interactions
    ``n_i+`` (Saito et al., WSDM 2020; see :class:`PopularityPropensity`)."""
    check("eta", eta, eta >= 0, "be >= 0")
    counts = np.asarray(positives, dtype=np.float64)
    check("positives", counts[counts < 0][:1].tolist(), not (counts < 0).any(), "be >= 0")
    top = counts.max(initial=0.0)
    check("positives", "all zero" if counts.size else "empty", top > 0,
          "have a positive count somewhere (the formula divides by the largest)")
    return (counts / top) ** eta


@dataclass(frozen=True)
class PopularityPropensity(Fitted):
    """Exposure propensity of an item from its relative popularity among the positives.

    Saito, Yaginuma, Nishino, Sakata and Nakata, "Unbiased Recommender Learning from
    Missing-Not-At-Random Implicit Feedback", WSDM 2020: with ``n_i+`` the clicks item
    ``i`` received, the probability that a user was exposed to it is estimated as::

        theta_i = (n_i+ / max_j n_j+) ** eta

    (the paper uses ``eta = 0.5``). An item nobody clicked gets 0 (for ``eta`` > 0),
    whether it was shown or not: the Rel-MF loss divides by it, so clip it first
    (:func:`models.propensity.clip_propensities`).

    Learned: ``items_`` (the item ids seen, sorted), ``positives_`` (their clicks) and
    ``propensity_`` (their theta), aligned.
    """

    eta: float = 0.5

    def __post_init__(self) -> None:
        check("eta", self.eta, self.eta >= 0, "be >= 0")

    def fit(self, log: Log) -> PopularityPropensity:
        """Count the clicks per item over the join's ``item_id`` and ``clicked``."""
        frame = columns(log, ["item_id", "clicked"])
        counts = (frame.with_columns(clicked=pl.Series(clicks(frame)))
                  .group_by("item_id").agg(positives=pl.col("clicked").sum())
                  .sort("item_id"))
        positives = counts["positives"].to_numpy()
        self._learn(items_=counts["item_id"].to_numpy(), positives_=positives.astype(np.int64),
                    propensity_=popularity_propensity(positives, self.eta))
        return self

    def predict(self, items: ArrayLike) -> np.ndarray:
        """theta for these item ids; an item not in the log had no clicks."""
        self._check_fitted("propensity_")
        table = pl.DataFrame({"item_id": self.items_, "propensity": self.propensity_})
        asked = pl.DataFrame({"item_id": pl.Series(np.asarray(items)).cast(
            table["item_id"].dtype, strict=False)})
        found = asked.join(table, on="item_id", how="left", maintain_order="left")
        return found["propensity"].fill_null(0.0 ** self.eta).to_numpy()

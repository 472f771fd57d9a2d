"""A simulated world's catalog as a shop knows it: item ids and titles, no latent truth."""

from __future__ import annotations

import numpy as np
import polars as pl

from simulation.policies import item_id
from simulation.world import World


def catalog(world: World) -> pl.DataFrame:
    """One row per item: ``item_id`` (``i<index>``) and ``title``."""
    items = np.arange(world.n_items)
    return pl.DataFrame({"item_id": [item_id(i) for i in items.tolist()],
                         "title": world.titles(items)})

"""Flipping training positives: the flipped rows land on items that are neither relevant
nor already the user's, and a share that cannot be met is an error, not an endless loop."""

from __future__ import annotations

import numpy as np
import pytest

from simulation.implicit import flip_rows


def test_flipped_rows_land_on_free_irrelevant_items() -> None:
    rng = np.random.default_rng(0)
    relevant = rng.random((20, 50)) < 0.2
    users = np.repeat(np.arange(20), 5)
    items = np.array([rng.choice(50, 5, replace=False) for _ in range(20)]).ravel()
    flipped = flip_rows(users, items, relevant, 0.4, rng)
    changed = flipped != items
    assert changed.sum() == 40
    assert not relevant[users[changed], flipped[changed]].any()
    pairs = users * 50 + flipped
    assert len(np.unique(pairs)) == len(pairs)


def test_a_share_no_user_can_meet_names_the_user() -> None:
    relevant = np.ones((1, 3), dtype=bool)
    with pytest.raises(ValueError, match="share=1.0 must leave every user enough items"):
        flip_rows(np.zeros(3, dtype=int), np.arange(3), relevant, 1.0,
                  np.random.default_rng(0))

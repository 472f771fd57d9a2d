"""Evaluation policies of ours for ``clickloop ope --policy NAME``, each a pure function
returning the action distribution ``(n, n_actions, n_positions)`` that
:class:`~bandits.ope.OPEData` takes (each (row, position) column sums to 1).

- ``uniform``: every item equally likely at every position;
- ``logged``: the behaviour policy's own item x position marginals, estimated as the
  empirical frequencies of the log, the same for every row. A sanity check: when the logging
  policy ignored the context (a random or fixed-distribution log, as OBD's), this is that
  policy and its value is the log's mean reward; IPW and SNIPW return exactly that mean where
  the logged propensities are those frequencies (a balanced uniform log), close to it
  otherwise. For a contextual logging policy it is only its average over contexts;
- ``learner:DIR``: a ``clickloop learn`` checkpoint, served greedily: for each logged slate
  every item is scored by the policy's mean estimate (``policy.mean``) and the top
  n_positions are shown, best first (a one-hot distribution, propensity 1, as the design
  asks of a deterministic policy)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from bandits.ope.data import OPEInputError

#: The names ``--policy`` accepts; ``learner`` takes a folder after a colon.
POLICY_NAMES = ("uniform", "logged", "learner:DIR")
#: Feature values built at once while scoring a learner's slates: bounds memory.
_CHUNK_VALUES = 4_000_000


def parse_policy(name: str) -> tuple[str, str | None]:
    """``(kind, argument)`` of a ``--policy`` name: ``("uniform", None)``, ``("logged",
    None)`` or ``("learner", DIR)``."""
    kind, colon, argument = name.partition(":")
    if kind in ("uniform", "logged") and not colon:
        return kind, None
    if kind == "learner" and argument:
        return kind, argument
    raise OPEInputError(f"policy={name!r} must be one of {', '.join(POLICY_NAMES)}")


def uniform_policy(n: int, n_actions: int, n_positions: int) -> np.ndarray:
    """1 / n_actions everywhere (a read-only view: no memory per row)."""
    if n < 1 or n_actions < 1 or n_positions < 1:
        raise OPEInputError(f"n={n}, n_actions={n_actions}, n_positions={n_positions} must all "
                            "be >= 1")
    return np.broadcast_to(np.full((1, n_actions, n_positions), 1.0 / n_actions),
                           (n, n_actions, n_positions))


def logged_policy(action: np.ndarray, position: np.ndarray, n_actions: int, n_positions: int
                  ) -> np.ndarray:
    """The empirical frequency of each item at each position in the log, the same for every
    row (a position never logged gets the uniform distribution)."""
    action, position = np.asarray(action, np.int64), np.asarray(position, np.int64)
    if action.shape != position.shape or action.ndim != 1 or not action.size:
        raise OPEInputError(f"action {action.shape} and position {position.shape} must be "
                            "the same non-empty 1-d shape")
    counts = np.bincount(action * n_positions + position, minlength=n_actions * n_positions
                         ).reshape(n_actions, n_positions).astype(np.float64)
    totals = counts.sum(axis=0, keepdims=True)
    dist = np.where(totals > 0, counts / np.where(totals > 0, totals, 1.0), 1.0 / n_actions)
    return np.broadcast_to(dist[None], (action.size, n_actions, n_positions))


def _learner_policy(state: Any) -> tuple[Any, Any, int]:
    """The policy and its :class:`~bandits.context.ContextFeatures`, rebuilt from the shape
    the checkpoint saved, and the item vectors' width it was trained with."""
    from bandits.context import ContextFeatures
    from bandits.policies import DiagLinUCB, EpsilonGreedy, LinUCB

    shape = state.config.get("shape")
    if not shape:
        raise OPEInputError("the learner checkpoint saved no feature shape (config.shape)")
    try:
        features = ContextFeatures(**shape["features"])
        kind, d, ridge = shape["policy"], int(shape["n_features"]), float(shape["ridge"])
        policies = {"diag-linucb": DiagLinUCB, "linucb": LinUCB, "epsilon-greedy": EpsilonGreedy}
        if kind not in policies:
            raise OPEInputError(f"the learner checkpoint holds a {kind!r} policy; known: "
                                f"{', '.join(policies)}")
        # Only the mean is used: the exploration setting does not change it.
        policy = policies[kind](d, ridge=ridge).load_state_dict(state.policy)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, OPEInputError):
            raise
        raise OPEInputError(f"the learner checkpoint cannot be rebuilt: {exc}") from None
    return policy, features, int(shape["item_dim"])


def learner_scores(state_dir: str | os.PathLike[str], items: Any, item_ids: Sequence[str],
                   contexts: Sequence[str | None]) -> np.ndarray:
    """(len(contexts), len(item_ids)): the mean reward the checkpoint in ``state_dir``
    predicts for every item under each slate's context JSON; ``items`` is the
    :class:`~bandits.context.ItemVectors` the learner was trained with (an item it lacks
    gets its prior vector and counts as never seen, as in training)."""
    import torch

    from bandits.learner.rows import context_frame
    from bandits.learner.state import LearnerStateError, read_state

    try:
        state = read_state(state_dir)
    except (LearnerStateError, OSError) as exc:
        raise OPEInputError(f"learner:{state_dir}: {exc}") from None
    policy, features, item_dim = _learner_policy(state)
    if items.dim != item_dim:
        raise OPEInputError(f"the item vectors have {items.dim} columns; the learner in "
                            f"{state_dir} was trained on {item_dim}")
    vectors, known = items.lookup(np.asarray(item_ids, dtype=object)[None], features.dtype)
    frame = context_frame(pl.DataFrame({"context": list(contexts)}, schema={
        "context": pl.String}), features)
    n_items = len(item_ids)
    step = max(1, _CHUNK_VALUES // (n_items * policy.n_features))
    out = np.empty((len(contexts), n_items))
    with torch.no_grad():
        for start in range(0, len(contexts), step):
            part = frame.slice(start, step)
            rows = part.height
            x = features.transform(part, vectors.expand(rows, -1, -1),
                                   known.expand(rows, -1))
            out[start:start + rows] = policy.mean(x).cpu().numpy()
    return out


def top_k_policy(scores: np.ndarray, slate: np.ndarray, n_positions: int) -> np.ndarray:
    """The deterministic policy that shows each slate's ``n_positions`` best-scored items,
    best first: (len(slate), n_items, n_positions) one-hot, row i following its slate
    ``slate[i]``'s scores (ties go to the lower item index)."""
    n_slates, n_items = scores.shape
    if n_items < n_positions:
        raise OPEInputError(f"{n_items} items cannot fill {n_positions} positions")
    chosen = np.argsort(-scores, axis=1, kind="stable")[:, :n_positions]
    per_slate = np.zeros((n_slates, n_items, n_positions))
    per_slate[np.arange(n_slates)[:, None], chosen, np.arange(n_positions)[None, :]] = 1.0
    return per_slate[np.asarray(slate, np.int64)]

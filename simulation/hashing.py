"""Stable hashing of integer ids: for assignment to variants and for deterministic noise."""

from __future__ import annotations

import numpy as np
from scipy import special


def splitmix64(ids: np.ndarray, salt: int = 0) -> np.ndarray:
    """A well-mixed 64-bit hash of each integer id and ``salt`` (Steele, Lea and Flood,
    "Fast splittable pseudorandom number generators", OOPSLA 2014)."""
    with np.errstate(over="ignore"):
        z = np.asarray(ids).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(
            salt + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def hash_bucket(ids: np.ndarray, buckets: int, salt: int = 0) -> np.ndarray:
    """The stable bucket 0..buckets-1 of each id."""
    return (splitmix64(ids, salt) % np.uint64(buckets)).astype(np.int64)


def hash_normal(ids: np.ndarray, salt: int = 0) -> np.ndarray:
    """A standard normal value fixed by each id and ``salt``."""
    uniform = ((splitmix64(ids, salt) >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
    return special.ndtri(uniform)

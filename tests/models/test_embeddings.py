"""TextEncoder and EmbeddingCache with the real all-MiniLM-L6-v2 weights (loaded once per
session by the ``text_encoder`` fixture of conftest.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from models.embeddings import EmbeddingCache, TextEncoder
from models.embeddings import text as text_module

TEXTS = ["acme navy wool coat", "red dress", "umbra grey cashmere sweater", "red dress"]


class Counter:
    """Wraps the shared model's encode and counts the texts it is given."""

    def __init__(self, encoder: TextEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
        self.texts: list[str] = []
        model = encoder.model
        original = model.encode

        def encode(sentences, *args, **kwargs):
            self.texts.extend(sentences)
            return original(sentences, *args, **kwargs)

        monkeypatch.setattr(model, "encode", encode)


def test_shapes_dtype_norms_and_repeats_encoded_once(text_encoder, tmp_path, monkeypatch):
    encoder = TextEncoder(cache_dir=tmp_path, batch_size=2)
    counter = Counter(encoder, monkeypatch)
    done: list[int] = []
    vectors = encoder.encode(TEXTS, progress=done.append)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors[1], vectors[3])
    assert sorted(counter.texts) == sorted(set(TEXTS))  # "red dress" once
    assert sum(done) == len(TEXTS) and done[0] == 1  # the repeat first, then two batches of 2
    # Related titles are closer than unrelated ones: the weights are real, not random.
    assert vectors[0] @ vectors[2] > vectors[0] @ vectors[1]
    assert encoder.encode([]).shape == (0, 384)


def test_cache_hit_does_not_run_the_model_and_survives_a_new_encoder(text_encoder, tmp_path,
                                                                     monkeypatch):
    first = TextEncoder(cache_dir=tmp_path).encode(TEXTS)
    again = TextEncoder(cache_dir=tmp_path)  # a new instance reads the chunks on disk
    assert len(again.cache) == 3
    counter = Counter(again, monkeypatch)
    done: list[int] = []
    np.testing.assert_array_equal(again.encode(TEXTS, progress=done.append), first)
    assert counter.texts == [] and done == [len(TEXTS)]
    # Only the new text is encoded, and written as one more chunk.
    again.encode(["acme navy wool coat", "kestrel olive linen shirt"])
    assert counter.texts == ["kestrel olive linen shirt"]
    assert len(list(again.cache.folder.glob("chunk-*.npz"))) == 2
    assert again.cache.folder.name == "all-MiniLM-L6-v2-384"


def test_corrupted_chunk_is_skipped_and_reencoded(text_encoder, tmp_path, monkeypatch, caplog):
    first = TextEncoder(cache_dir=tmp_path).encode(TEXTS)
    (chunk,) = tmp_path.glob("*/chunk-*.npz")
    chunk.write_bytes(chunk.read_bytes()[:100])  # truncated, as by a full disk
    with caplog.at_level(logging.WARNING, logger="models.embeddings.cache"):
        encoder = TextEncoder(cache_dir=tmp_path)
    assert "skipping unreadable embedding cache chunk" in caplog.text
    assert encoder.cache.skipped == [chunk] and len(encoder.cache) == 0
    counter = Counter(encoder, monkeypatch)
    np.testing.assert_allclose(encoder.encode(TEXTS), first, atol=1e-5)
    assert sorted(counter.texts) == sorted(set(TEXTS))


@pytest.mark.parametrize("texts, message", [
    (["ok", None], "texts[1]=None must be a non-empty string"),
    (["ok", "", "x"], "texts[1]='' must be a non-empty string"),
    (["   "], "texts[0]='   ' must be a non-empty string"),
    ([b"bytes"], "texts[0]=b'bytes' must be a non-empty string"),
    ("a string", "texts='a string' must be a sequence of strings"),
    (42, "texts=42 must be a sequence of strings"),
])
def test_bad_texts_name_the_field(texts, message):
    # Validation runs before the model is needed: no weights are required for this test.
    with pytest.raises(ValueError) as info:
        TextEncoder().encode(texts)
    assert str(info.value) == message


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="batch_size=0 must be an int >= 1"):
        TextEncoder(batch_size=0)
    with pytest.raises(ValueError, match="device='' must be"):
        TextEncoder(device="")


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(text_module, "PACKAGE", "no_such_package_for_clickloop_tests")
    with pytest.raises(ImportError, match=r"pip install clickloop\[text\]"):
        text_module._load_model.__wrapped__("cpu")  # past the per-process memo


def test_cache_on_its_own(tmp_path: Path, caplog):
    cache = EmbeddingCache(tmp_path, model="org/model v2", dim=3)
    assert cache.folder.name == "org_model_v2-3"
    vectors = np.eye(3, dtype=np.float32)
    assert cache.put(["a", "b", "c"], vectors) is not None
    assert cache.put(["a"], vectors[:1]) is None  # nothing new: no chunk
    found, got = cache.lookup(["b", "zzz", "a"])
    assert found.tolist() == [True, False, True]
    np.testing.assert_array_equal(got, [[0, 1, 0], [0, 0, 0], [1, 0, 0]])
    assert "c" in cache and "zzz" not in cache
    # A chunk of another dimension in the folder (a bug, a hand copy) is skipped, not mixed in.
    other = EmbeddingCache(tmp_path / "x", model="m", dim=2)
    other.put(["d"], np.ones((1, 2)))
    next(other.folder.glob("chunk-*.npz")).rename(cache.folder / "chunk-0-other.npz")
    with caplog.at_level(logging.WARNING, logger="models.embeddings.cache"):
        reopened = EmbeddingCache(tmp_path, model="org/model v2", dim=3)
    assert len(reopened) == 3 and "must be float32 (1, 3)" in caplog.text
    with pytest.raises(ValueError, match=r"vectors.shape=\(1, 3\) must be \(2, 3\)"):
        cache.put(["e", "f"], vectors[:1])
    with pytest.raises(ValueError, match="dim=0 must be an int >= 1"):
        EmbeddingCache(tmp_path, model="m", dim=0)
    with pytest.raises(ValueError, match="model='' must be a non-empty string"):
        EmbeddingCache(tmp_path, model="", dim=3)

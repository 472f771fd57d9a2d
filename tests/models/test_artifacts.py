"""Model artifacts: safetensors weights plus JSON metadata, written atomically, read back to
the same scores, and refused with the file and the problem named when anything is off."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.artifacts import METADATA_FILE, WEIGHTS_FILE, ArtifactError, load, save
from models.data import InteractionDataModule
from models.recommenders import BPR, MF, RelMF, fit


@pytest.fixture(scope="module")
def trained() -> tuple[RelMF, InteractionDataModule]:
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(12), 4)
    items = rng.integers(0, 15, len(users))
    pairs = np.unique(users * 15 + items)
    data = InteractionDataModule(pairs // 15, pairs % 15,
                                 propensities=rng.uniform(0.2, 1, len(pairs)),
                                 n_items=15, batch_size=16, seed=0,
                                 user_ids=[f"user-{u}" for u in range(12)],
                                 item_ids=[f"item-{i}" for i in range(15)],
                                 data_range={"first_ts": 1.0, "last_ts": 2.0})
    model = RelMF(12, 15, dim=4, lr=0.05, clip=0.2)
    fit(model, data, max_epochs=3)
    return model, data


@pytest.fixture
def artifact_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "artifacts"
    folder.mkdir()
    return folder


@pytest.fixture
def saved(trained: tuple[RelMF, InteractionDataModule], artifact_dir: Path) -> Path:
    model, data = trained
    return save(model, artifact_dir / "rel-mf-1", data=data, metrics={"val_loss": 0.5})


def _edit_metadata(folder: Path, change: Callable[[dict[str, Any]], None]) -> None:
    metadata = json.loads((folder / METADATA_FILE).read_text())
    change(metadata)
    (folder / METADATA_FILE).write_text(json.dumps(metadata))


def _refusal(folder: Path, artifact_dir: Path, **options: Any) -> ArtifactError:
    with pytest.raises(ArtifactError) as caught:
        load(folder, artifact_dir, **options)
    return caught.value


def test_a_saved_then_loaded_model_scores_identically(
        trained: tuple[RelMF, InteractionDataModule], saved: Path, artifact_dir: Path) -> None:
    model, _ = trained
    artifact = load(saved, artifact_dir, kind="rel-mf")
    users = torch.arange(12).repeat_interleave(15)
    items = torch.arange(15).repeat(12)
    assert torch.equal(artifact.model.score(users, items), model.score(users, items))
    assert torch.equal(artifact.model.recommend(torch.arange(12), 5)[0],
                       model.recommend(torch.arange(12), 5)[0])
    meta = artifact.metadata
    assert meta["kind"] == "rel-mf" and meta["format_version"] == 1
    assert meta["hyper_parameters"] == dict(model.hparams)
    assert meta["training_data"] == {"first_ts": 1.0, "last_ts": 2.0}
    assert meta["metrics"] == {"val_loss": 0.5}
    assert meta["tensors"]["user_embedding.weight"] == {"dtype": "float32", "shape": [12, 4]}
    assert artifact.user_ids == [f"user-{u}" for u in range(12)]
    assert artifact.item_ids is not None and artifact.item_ids[3] == "item-3"


def test_the_artifact_is_two_plain_files_and_loading_never_unpickles(
        saved: Path, artifact_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sorted(p.name for p in saved.iterdir()) == [METADATA_FILE, WEIGHTS_FILE]
    # safetensors: an 8-byte little-endian header length, then a JSON header.
    head = (saved / WEIGHTS_FILE).read_bytes()
    assert head[8:9] == b"{"

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load must not be used to read artifacts")

    monkeypatch.setattr(torch, "load", forbidden)
    load(saved, artifact_dir)


def test_every_kind_round_trips(artifact_dir: Path) -> None:
    for model in (MF(3, 4, dim=2, seed=1), BPR(3, 4, dim=2, seed=2),
                  RelMF(3, 4, dim=2, form="cross-entropy", seed=3)):
        folder = save(model, artifact_dir / model.kind)
        loaded = load(folder, artifact_dir, kind=model.kind).model
        assert type(loaded) is type(model) and dict(loaded.hparams) == dict(model.hparams)
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                     model.state_dict().values(), strict=True))


def test_an_artifact_outside_the_artifact_directory_is_refused(
        trained: tuple[RelMF, InteractionDataModule], artifact_dir: Path,
        tmp_path: Path) -> None:
    outside = save(trained[0], tmp_path / "elsewhere")
    error = _refusal(outside, artifact_dir)
    assert error.path == outside and "outside the artifact directory" in str(error)
    assert str(outside) in str(error)
    # Nor by climbing out, nor through a link that points out.
    assert "outside" in str(_refusal(artifact_dir / ".." / "elsewhere", artifact_dir))
    os.symlink(outside, artifact_dir / "link")
    assert "outside" in str(_refusal(artifact_dir / "link", artifact_dir))


def test_a_corrupted_weights_file_is_refused(saved: Path, artifact_dir: Path) -> None:
    weights = saved / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    error = _refusal(saved, artifact_dir)
    assert error.path.name == WEIGHTS_FILE and str(weights) in str(error)
    assert "SHA-256" in str(error) and "corrupted" in str(error)


def test_a_truncated_weights_file_is_refused(saved: Path, artifact_dir: Path) -> None:
    weights = saved / WEIGHTS_FILE
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 3])
    error = _refusal(saved, artifact_dir)
    assert str(weights) in str(error) and "truncated" in str(error)
    assert f"is {size // 3} bytes, the metadata says {size}" in str(error)


def test_a_missing_weights_file_or_metadata_is_refused(saved: Path, artifact_dir: Path
                                                       ) -> None:
    (saved / WEIGHTS_FILE).unlink()
    error = _refusal(saved, artifact_dir)
    assert error.path.name == WEIGHTS_FILE and "missing" in str(error)
    (saved / METADATA_FILE).unlink()
    error = _refusal(saved, artifact_dir)
    assert error.path.name == METADATA_FILE and "not an artifact folder" in str(error)


def test_damaged_metadata_is_refused(saved: Path, artifact_dir: Path) -> None:
    (saved / METADATA_FILE).write_bytes(b'{"format": "clickloop.model", "kind": ')
    error = _refusal(saved, artifact_dir)
    assert error.path.name == METADATA_FILE and "not valid JSON" in str(error)


def test_a_foreign_artifact_is_refused(saved: Path, artifact_dir: Path) -> None:
    # Another kind than the caller expects.
    error = _refusal(saved, artifact_dir, kind="mf")
    assert error.path.name == METADATA_FILE and "kind is 'rel-mf', expected 'mf'" in str(error)
    # A kind nobody knows, another format version, another format altogether.
    _edit_metadata(saved, lambda m: m.update(kind="deep-fm"))
    assert "kind 'deep-fm' is unknown" in str(_refusal(saved, artifact_dir))
    _edit_metadata(saved, lambda m: m.update(kind="rel-mf", format_version=2))
    assert "format_version 2; this loader reads version 1" in str(_refusal(saved, artifact_dir))
    (saved / METADATA_FILE).write_text(json.dumps({"model_type": "bert"}))
    error = _refusal(saved, artifact_dir)
    assert "not a clickloop model artifact" in str(error) and str(saved) in str(error)


def test_tensors_that_do_not_match_the_metadata_are_refused(saved: Path, artifact_dir: Path
                                                            ) -> None:
    _edit_metadata(saved, lambda m: m["tensors"]["user_embedding.weight"].update(shape=[13, 4]))
    error = _refusal(saved, artifact_dir)
    assert error.path.name == WEIGHTS_FILE
    assert ("tensors do not match the metadata: user_embedding.weight is float32[12, 4], "
            "the metadata says float32[13, 4]") in str(error)
    _edit_metadata(saved, lambda m: (m["tensors"]["user_embedding.weight"].update(
        shape=[12, 4]), m["tensors"].pop("bias")))
    assert "not in the metadata ['bias']" in str(_refusal(saved, artifact_dir))


def test_tensors_that_do_not_fit_the_hyper_parameters_are_refused(
        saved: Path, artifact_dir: Path) -> None:
    _edit_metadata(saved, lambda m: m["hyper_parameters"].update(n_items=16))
    error = _refusal(saved, artifact_dir)
    assert "do not fit a model of the recorded hyper-parameters" in str(error)
    assert "item_embedding.weight" in str(error)
    _edit_metadata(saved, lambda m: m["hyper_parameters"].update(n_items=15, depth=3))
    assert "hyper-parameters do not fit a 'rel-mf' model" in str(_refusal(saved, artifact_dir))


def test_save_refuses_id_maps_of_the_wrong_size(trained: tuple[RelMF, InteractionDataModule],
                                                artifact_dir: Path) -> None:
    with pytest.raises(ValueError, match="user_ids has 2 entries; the model has 12"):
        save(trained[0], artifact_dir / "bad", user_ids=["a", "b"])
    assert not (artifact_dir / "bad" / METADATA_FILE).exists()


def test_list_rankers_are_artifacts_too(artifact_dir: Path) -> None:
    """The unbiased rankers save and load like the recommenders, with the names of their
    input columns; DLA keeps its learned examination curve."""
    from models.ultr import DLA, IPSListwise, ListDataModule
    from models.ultr import fit as fit_ranker

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(32, 4, 3, generator=generator)
    data = ListDataModule(features, (torch.rand(32, 4, generator=generator) < 0.3).float(),
                          examination=[1.0, 0.6, 0.4, 0.3], batch_size=8,
                          data_range={"first_ts": 1.0, "last_ts": 9.0})
    names = ["bm25", "tfidf", "popularity"]
    for model in (IPSListwise(3, hidden=(8,)), DLA(3, n_positions=4, hidden=(8,))):
        fit_ranker(model, data, max_epochs=2)
        folder = save(model, artifact_dir / model.kind, data=data, feature_names=names,
                      metrics={"ndcg@10": 0.5})
        artifact = load(folder, artifact_dir, kind=model.kind)
        assert type(artifact.model) is type(model) and artifact.feature_names == names
        assert artifact.metadata["training_data"] == {"first_ts": 1.0, "last_ts": 9.0}
        assert torch.equal(artifact.model.score(features), model.score(features))
    assert isinstance(artifact.model, DLA)
    np.testing.assert_array_equal(artifact.model.examination_, model.examination_)
    with pytest.raises(ValueError, match="feature_names has 2 entries; the model has 3"):
        save(model, artifact_dir / "bad", feature_names=names[:2])
    with pytest.raises(ValueError, match="user_ids do not apply to a 'dla' model"):
        save(model, artifact_dir / "bad", user_ids=["u0"])
    _edit_metadata(folder, lambda m: m.update(feature_names=names[:1]))
    assert "feature_names has 1 entries; the model has 3" in str(_refusal(folder, artifact_dir))
    for change, words in ((dict(feature_names=5), "'feature_names' must be a list of strings"),
                          (dict(feature_names="abc"), "'feature_names' must be a list"),
                          (dict(id_maps="xyz"), "'id_maps' must be an object or null"),
                          (dict(id_maps={"item_ids": [1]}), "'id_maps.item_ids' must be"),
                          (dict(features=[1]), "'features' must be an object or null")):
        base = dict(feature_names=names, id_maps=None, features=None)
        _edit_metadata(folder, lambda m, change=change: m.update(base, **change))
        assert words in str(_refusal(folder, artifact_dir))

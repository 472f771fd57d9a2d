"""Shared fixtures: the embedded broker (one per session), settings isolated per test, one
torch thread for modules of small tensors."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from ingest.broker import EmbeddedBroker
from ingest.settings import Settings, load_settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A real Tansu broker on a loopback socket, or the one named by CLICKLOOP_KAFKA_BOOTSTRAP
    (then this fixture only reports its address)."""
    external = os.environ.get("CLICKLOOP_KAFKA_BOOTSTRAP")
    if external:
        host, _, port = external.split(",")[0].rpartition(":")
        yield EmbeddedBroker(port=int(port), host=host)  # not started: somebody else's
        return
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_file=log) as embedded:
        yield embedded


def make_settings(tmp_path: Path, **sections: dict[str, object]) -> Settings:
    """Settings with a fresh topic, group and journal, so tests never see each other's data."""
    name = f"t{uuid.uuid4().hex[:10]}"
    base = load_settings(env={})
    kafka = msgspec.structs.replace(base.kafka, topic=name, dlq_topic=f"{name}.dlq",
                                    group_id=f"{name}-group", **sections.get("kafka", {}))
    ingest = msgspec.structs.replace(base.ingest, journal_dir=str(tmp_path / "journal"),
                                     **sections.get("ingest", {}))
    return msgspec.structs.replace(base, kafka=kafka, ingest=ingest)


@pytest.fixture
def settings_factory(tmp_path: Path) -> Callable[..., Settings]:
    return lambda **sections: make_settings(tmp_path, **sections)


@pytest.fixture
def obd_dir() -> Path:
    path = SHARED_DATA / "obd"
    if not (path / "random" / "men" / "men.csv").exists():
        pytest.skip("the Open Bandit Dataset sample is not in ../shared/data")
    return path


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch intra-op thread for a module: its tensors are small, and on a shared 2-core
    machine each parallel op waits for the other core to be free."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

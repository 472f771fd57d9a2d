from __future__ import annotations

from pathlib import Path

import pytest

from ingest.settings import SettingsError, load_settings


def test_defaults_work_without_file_or_environment(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env={})
    assert settings.kafka.bootstrap == "" and settings.kafka.topic == "events"
    assert settings.kafka.dlq_topic == "events.dlq" and settings.kafka.session_timeout_ms == 6000


def test_environment_overrides_toml_which_overrides_defaults(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[kafka]\nbootstrap = "file:1"\npartitions = 2\n'
                      '[ingest]\ndedupe_window = 10\n')
    settings = load_settings(config, env={"CLICKLOOP_KAFKA_BOOTSTRAP": "env:2",
                                          "CLICKLOOP_INGEST_FLUSH_INTERVAL_S": "0.5"})
    assert settings.kafka.bootstrap == "env:2"  # env wins
    assert settings.kafka.partitions == 2  # from the file
    assert settings.ingest.dedupe_window == 10
    assert settings.ingest.flush_interval_s == 0.5  # env string converted to float


@pytest.mark.parametrize(("env", "message"), [
    ({"CLICKLOOP_KAFKA_PARTITIONS": "many"}, "CLICKLOOP_KAFKA_PARTITIONS"),
    ({"CLICKLOOP_KAFKA_PARTITIONS": "0"}, "CLICKLOOP_KAFKA_PARTITIONS"),
    ({"CLICKLOOP_KAFKA_BACKEND": "rdkafka"}, "CLICKLOOP_KAFKA_BACKEND"),
])
def test_bad_environment_value_names_the_variable(env: dict[str, str], message: str,
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError, match=message):
        load_settings(env=env)


def test_unknown_key_in_file_and_missing_file_are_errors(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[kafka]\nbootstrapp = 'x'\n")
    with pytest.raises(SettingsError, match="bootstrapp"):
        load_settings(config, env={})
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", env={})

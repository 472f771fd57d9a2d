"""Settings composed from per-package sections: each package adds its own without ingest."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.settings import SettingsError, load_settings
from serving.settings import ClickloopSettings, load


def test_a_package_section_comes_from_file_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[serving]\nmax_body_bytes = 2048\n[kafka]\npartitions = 2\n")
    assert load(config, env={}).serving.max_body_bytes == 2048
    settings = load(config, env={"CLICKLOOP_SERVING_MAX_BODY_BYTES": "4096"})
    assert isinstance(settings, ClickloopSettings)
    assert settings.serving.max_body_bytes == 4096
    assert settings.kafka.partitions == 2
    # ingest's loader reads the same file: the other package's section is not its business.
    assert load_settings(config, env={}).kafka.partitions == 2


def test_the_composed_settings_reject_unknown_sections_and_bad_values(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[servng]\nmax_body_bytes = 1\n")
    with pytest.raises(SettingsError, match="servng"):
        load(config, env={})
    with pytest.raises(SettingsError, match="CLICKLOOP_SERVING_MAX_BODY_BYTES"):
        load(env={"CLICKLOOP_SERVING_MAX_BODY_BYTES": "0"})

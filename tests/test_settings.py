from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from otakit.errors import ValidationError
from otakit.server.settings import load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTAKIT_"):
            monkeypatch.delenv(name)


def test_defaults_are_the_embedded_ones() -> None:
    settings = load_settings()
    assert settings.database_url == "sqlite:///var/otakit.db"
    assert settings.files_dir == Path("var/otafiles")
    assert settings.upload_tokens == []
    assert settings.allow_anonymous_upload is False
    assert settings.max_upload_bytes == 10 * 1024**3


def test_toml_file_then_env_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "server.toml"
    config.write_text('port = 9000\nhost = "0.0.0.0"\nupload_tokens = ["a", "b"]\nfiles_dir = "/srv/ota"\n')
    assert load_settings(config).port == 9000
    assert load_settings(config).upload_tokens == ["a", "b"]
    monkeypatch.setenv("OTAKIT_PORT", "9100")
    monkeypatch.setenv("OTAKIT_UPLOAD_TOKENS", "x, y,,")
    settings = load_settings(config)
    assert settings.port == 9100  # the environment wins over the file
    assert settings.upload_tokens == ["x", "y"]  # comma-separated
    assert settings.host == "0.0.0.0"
    assert settings.files_dir == Path("/srv/ota")
    assert load_settings(config, port=1).port == 1  # the command line wins over both


def test_json_file_and_otakit_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "server.json"
    config.write_text(json.dumps({"database_url": "mysql://u:p@db:3306/ota", "max_upload_bytes": 1000}))
    monkeypatch.setenv("OTAKIT_CONFIG", str(config))
    settings = load_settings()
    assert settings.database_url == "mysql://u:p@db:3306/ota"
    assert settings.max_upload_bytes == 1000


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")
    config = tmp_path / "bad.toml"
    config.write_text("max_upload_bytes = -5\n")
    with pytest.raises(ValidationError, match="max_upload_bytes"):
        load_settings(config)
    config.write_text("unknown_key = 1\n")
    with pytest.raises(ValidationError, match="unknown_key"):
        load_settings(config)


def test_unparsable_files_are_refused_with_where(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text('port = 9000\nhost = "0.0.0.0\n')
    with pytest.raises(ValidationError) as refused:
        load_settings(config)
    assert str(refused.value).startswith(f"config file {config} is not valid TOML: ")
    assert "line 2" in str(refused.value)
    config = tmp_path / "server.json"
    config.write_text('{"port": 9000 "host": "0.0.0.0"}')
    with pytest.raises(ValidationError) as refused:
        load_settings(config)
    assert str(refused.value) == (
        f"config file {config} is not valid JSON: Expecting ',' delimiter: line 1 column 15 (char 14)"
    )
    config.write_text("[1, 2]")
    with pytest.raises(ValidationError, match="must hold a JSON object"):
        load_settings(config)

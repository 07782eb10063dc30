from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from otakit.cli.main import app

runner = CliRunner()


@pytest.fixture
def settings_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OTAKIT_DATABASE_URL", f"sqlite:///{tmp_path / 'ota.db'}")
    monkeypatch.setenv("OTAKIT_FILES_DIR", str(tmp_path / "files"))
    return tmp_path


def test_db_upgrade_applies_migrations_once(settings_env: Path) -> None:
    first = runner.invoke(app, ["db", "upgrade"])
    assert first.exit_code == 0, first.output
    assert "0001_create_ota" in first.output
    second = runner.invoke(app, ["db", "upgrade"])
    assert second.exit_code == 0
    assert "up to date" in second.output
    with sqlite3.connect(settings_env / "ota.db") as conn:
        assert conn.execute("SELECT number FROM otakit_migrations").fetchall() == [(1,)]


def test_fsck_removes_partial_uploads(settings_env: Path) -> None:
    incoming = settings_env / "files" / ".incoming"
    incoming.mkdir(parents=True)
    (incoming / "0123.part").write_bytes(b"half an upload")
    result = runner.invoke(app, ["server", "fsck"])
    assert result.exit_code == 0, result.output
    assert "1 partial upload" in result.output
    assert list(incoming.iterdir()) == []


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    result = runner.invoke(app, ["db", "upgrade", "--config", str(tmp_path / "missing.toml")])
    assert result.exit_code == 1
    assert result.output.strip().startswith("otakit: error:")
    assert "missing.toml" in result.output
    assert "Traceback" not in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text("port = 'many'\n")
    result = runner.invoke(app, ["server", "--config", str(bad)])
    assert result.exit_code == 1
    assert "port" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_python_dash_m_and_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "otakit", "--version"], capture_output=True, text=True, check=True,
        env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    assert out.stdout.startswith("otakit ")


def test_unreachable_database_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTAKIT_DATABASE_URL", "mysql://nobody:secret@127.0.0.1:1/ota")
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 1
    assert result.output.startswith("otakit: error:")
    assert "secret" not in result.output  # never print the password

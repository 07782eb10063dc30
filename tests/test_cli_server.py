from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from otakit.cli.main import app
from otakit.server.db.migrations import load_migrations
from tests.servers import free_port

runner = CliRunner()
OTAKIT = str(Path(sys.executable).with_name("otakit"))  # the installed entry point


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
        applied = conn.execute("SELECT number FROM otakit_migrations ORDER BY number").fetchall()
        assert applied == [(m.number,) for m in load_migrations("sqlite")]


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


def _clean_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("OTAKIT_")}
    return {
        **env,
        "NO_COLOR": "1",
        "OTAKIT_DATABASE_URL": f"sqlite:///{tmp_path / 'ota.db'}",
        "OTAKIT_FILES_DIR": str(tmp_path / "files"),
        "OTAKIT_PORT": str(free_port()),
        **settings,
    }


def _one_line_error(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run([OTAKIT, *args], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode != 0, done
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("otakit: error: ")
    return lines[0]


@pytest.mark.parametrize("command", [["server"], ["server", "fsck"], ["db", "upgrade"]])
def test_start_up_errors_are_one_line(tmp_path: Path, command: list[str]) -> None:
    env = _clean_env(tmp_path)
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("port = 8000\nhost = \n")
    error = _one_line_error([*command, "--config", str(bad_toml)], env)
    assert f"config file {bad_toml} is not valid TOML: Invalid value (at line 2, column 8)" in error
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"port": 8000,}')
    error = _one_line_error([*command, "--config", str(bad_json)], env)
    assert f"config file {bad_json} is not valid JSON: " in error
    assert "line 1 column 15" in error

    error = _one_line_error(command, {**env, "OTAKIT_DATABASE_URL": "postgres://x"})
    assert "unsupported database URL 'postgres://x'" in error
    closed = f"mysql://root:secret@127.0.0.1:{free_port()}/x"
    error = _one_line_error(command, {**env, "OTAKIT_DATABASE_URL": closed})
    assert "unavailable" in error
    assert "secret" not in error


def test_server_starts_and_answers(tmp_path: Path) -> None:
    """The database check before uvicorn starts lets a fresh SQLite database through."""
    env = _clean_env(tmp_path)
    url = f"http://127.0.0.1:{env['OTAKIT_PORT']}/test"
    process = subprocess.Popen([OTAKIT, "server"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        answer = None
        while answer is None and process.poll() is None and time.monotonic() < deadline:
            try:
                answer = httpx.get(url, timeout=1).json()
            except httpx.TransportError:
                time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    assert answer == {"status": 200}, stderr

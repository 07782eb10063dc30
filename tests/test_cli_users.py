"""``otakit user add|list|delete|passwd``: operators in the server's database, from a shell."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from otakit.cli.main import app
from otakit.passwords import verify_password
from tests.terminal import on_a_terminal

runner = CliRunner()
OTAKIT = str(Path(sys.executable).with_name("otakit"))


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "ota.db"
    monkeypatch.setenv("OTAKIT_DATABASE_URL", f"sqlite:///{path}")
    return path


def stored_hash(database: Path, name: str) -> str | None:
    with sqlite3.connect(database) as conn:
        row = conn.execute("SELECT password_hash FROM users WHERE name = ?", (name,)).fetchone()
    return None if row is None else str(row[0])


def test_add_from_stdin_stores_a_slow_hash_never_the_password(database: Path) -> None:
    result = runner.invoke(app, ["user", "add", "alice", "--password-stdin"], input="s3cret-pass\n")
    assert result.exit_code == 0, result.output
    assert "added user alice" in result.output
    stored = stored_hash(database, "alice")
    assert stored is not None
    assert stored.startswith("scrypt$")
    assert "s3cret-pass" not in database.read_bytes().decode("latin-1")
    assert verify_password("s3cret-pass", stored)


def test_list_passwd_and_delete(database: Path) -> None:
    for name in ("bob", "alice"):
        assert (
            runner.invoke(app, ["user", "add", name, "--password-stdin"], input="password-1\n").exit_code == 0
        )
    listed = runner.invoke(app, ["user", "list"])
    assert [line.split("\t")[0] for line in listed.output.splitlines()] == ["alice", "bob"]
    assert listed.output.splitlines()[0].split("\t")[1].endswith("Z")
    changed = runner.invoke(app, ["user", "passwd", "bob", "--password-stdin"], input="password-2\n")
    assert changed.exit_code == 0, changed.output
    assert verify_password("password-2", stored_hash(database, "bob") or "")
    deleted = runner.invoke(app, ["user", "delete", "bob"])
    assert deleted.exit_code == 0
    assert "deleted user bob" in deleted.output
    assert stored_hash(database, "bob") is None


@pytest.mark.parametrize(
    ("args", "stdin", "says"),
    [
        (["user", "add", "alice", "--password-stdin"], "short\n", "at least 8"),
        (["user", "add", "../etc", "--password-stdin"], "password-1\n", "invalid user"),
        (["user", "delete", "nobody"], "", "no user nobody"),
        (["user", "passwd", "nobody", "--password-stdin"], "password-1\n", "no user nobody"),
    ],
)
def test_refusals_are_one_line(database: Path, args: list[str], stdin: str, says: str) -> None:
    result = runner.invoke(app, args, input=stdin)
    assert result.exit_code == 1
    assert result.output.strip().startswith("otakit: error:")
    assert says in result.output
    assert "Traceback" not in result.output


def test_a_taken_name_is_refused(database: Path) -> None:
    assert (
        runner.invoke(app, ["user", "add", "alice", "--password-stdin"], input="password-1\n").exit_code == 0
    )
    again = runner.invoke(app, ["user", "add", "alice", "--password-stdin"], input="password-2\n")
    assert again.exit_code == 1
    assert "exists already" in again.output
    assert verify_password("password-1", stored_hash(database, "alice") or "")  # unchanged


def test_add_asks_twice_at_a_prompt(database: Path, tmp_path: Path) -> None:
    env_url = f"sqlite:///{database}"
    code, output = on_a_terminal(
        [OTAKIT, "user", "add", "carol"],
        answers=["password-3", "password-3"],
        env={**os.environ, "OTAKIT_DATABASE_URL": env_url},
    )
    assert code == 0, output
    assert "Repeat" in output
    assert "password-3" not in output  # the prompt does not echo it
    assert verify_password("password-3", stored_hash(database, "carol") or "")


def test_the_installed_command_reads_stdin(database: Path) -> None:
    done = subprocess.run(
        [OTAKIT, "user", "add", "dave", "--password-stdin"],
        input="password-4\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert verify_password("password-4", stored_hash(database, "dave") or "")

"""`otakit upload` on a terminal shows a progress bar with size and speed; piped, plain lines.

The terminal case runs the real console entry point in a subprocess on a pseudo-terminal."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.servers import RunningServer
from tests.terminal import on_a_terminal

SIZE = 24 * 1024 * 1024


def _package(folder: Path, pkg: str) -> tuple[Path, Path]:
    """A file the server stores as it is (it never unzips), and its content.json."""
    zip_path = folder / f"{pkg}-main-1.0.zip"
    data = os.urandom(SIZE)
    zip_path.write_bytes(data)
    content = folder / "content.json"
    sha256 = hashlib.sha256(data).hexdigest()
    content.write_text(json.dumps({"package": pkg, "branch": "main", "version": "1.0", "sha256": sha256}))
    return zip_path, content


def _upload_argv(zip_path: Path, content: Path, url: str) -> list[str]:
    return [sys.executable, "-m", "otakit", "upload", str(zip_path), "-c", str(content), "-s", url]


def test_progress_baron_a_terminal(sqlite_server: RunningServer, tmp_path: Path, pkg: str) -> None:
    zip_path, content = _package(tmp_path, pkg)
    env = os.environ | {"OTAKIT_TOKEN": "test-token", "COLUMNS": "120", "TERM": "xterm"}
    code, output = on_a_terminal(_upload_argv(zip_path, content, sqlite_server.url), env)
    assert code == 0, output
    assert f"published {pkg} 1.0" in output
    assert "━" in output  # Rich's bar
    assert "25.2/25.2 MB" in output  # bytes sent of the total, at the end
    assert "/s" in output  # the transfer speed column
    assert re.search(r"\d:\d\d:\d\d", output)  # the time remaining column
    assert "uploading" not in output  # the plain line is for pipes
    got = httpx.get(f"{sqlite_server.url}/otafiles/{pkg}/main/{zip_path.name}")
    assert got.content == zip_path.read_bytes()


def test_plain_lines_when_piped(sqlite_server: RunningServer, tmp_path: Path, pkg: str) -> None:
    zip_path, content = _package(tmp_path, pkg)
    env = os.environ | {"OTAKIT_TOKEN": "test-token"}
    done = subprocess.run(
        _upload_argv(zip_path, content, sqlite_server.url), capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"uploading {zip_path.name} ({SIZE} bytes) to {sqlite_server.url}\n"
    assert done.stdout == f"published {pkg} 1.0 on branch main to {sqlite_server.url}\n"
    assert "━" not in done.stderr + done.stdout

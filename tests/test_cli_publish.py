"""The publisher's CLI, end to end against a real server: pack → upload → latest → download."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from otakit.cli.main import app
from tests.servers import RunningServer, free_port, run_server

runner = CliRunner()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "app").write_text("#!/bin/sh\necho app\n")
    (src / "config.ini").write_text("[app]\nlevel = 1\n")
    return src


def _run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def _one_line_error(code: int, stderr: str) -> str:
    assert code == 1
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("otakit: error: "), stderr
    assert sum(line.startswith("otakit: error") for line in lines) == 1  # progress lines may come before
    assert "Traceback" not in stderr
    return lines[-1]


def test_pack_upload_latest_download(
    sqlite_server: RunningServer, folder: Path, tmp_path: Path, pkg: str
) -> None:
    out = tmp_path / "dist"
    code, stdout, stderr = _run(
        "pack", str(folder), "--package", pkg, "--branch", "major", "--version", "1.0.0", "--out", str(out),
        "--remote", sqlite_server.url, "--depends", "base=>=1.0", "--after", "echo done",
    )  # fmt: skip
    assert code == 0, stderr
    zip_path = out / f"{pkg}-major-1.0.0.zip"
    assert zip_path.is_file()
    code, stdout, stderr = _run(
        "upload", str(zip_path), "--content", str(out / "content.json"), "--server", sqlite_server.url,
        "--token", "test-token",
    )  # fmt: skip
    assert code == 0, stderr
    assert f"published {pkg} 1.0.0" in stdout

    code, stdout, _ = _run(
        "latest", "--server", sqlite_server.url, "--package", pkg, "--branch", "major", "--json"
    )
    assert code == 0
    assert json.loads(stdout) == json.loads((out / "content.json").read_text())
    code, stdout, _ = _run("versions", "--server", sqlite_server.url, "--package", pkg, "--json")
    assert [entry["version"] for entry in json.loads(stdout)] == ["1.0.0"]
    code, stdout, _ = _run("versions", "--server", sqlite_server.url, "--package", pkg)
    assert code == 0
    assert "1.0.0" in stdout
    got = httpx.get(f"{sqlite_server.url}/otafiles/{pkg}/major/{pkg}-major-1.0.0.zip")
    assert got.content == zip_path.read_bytes()


def test_upload_conflict_force_and_token_from_env(
    sqlite_server: RunningServer, folder: Path, tmp_path: Path, pkg: str
) -> None:
    out = tmp_path / "dist"
    assert _run("pack", str(folder), "-p", pkg, "-b", "major", "-V", "2.0", "-o", str(out))[0] == 0
    zip_path, content = str(out / f"{pkg}-major-2.0.zip"), str(out / "content.json")
    env = {"OTAKIT_TOKEN": "second-token"}
    assert _run("upload", zip_path, "-c", content, "-s", sqlite_server.url, env=env)[0] == 0
    # The same file again: not an error, it is there already.
    code, stdout, _ = _run("upload", zip_path, "-c", content, "-s", sqlite_server.url, env=env)
    assert code == 0
    assert "already on the server" in stdout
    # Different bytes under the same version: 409, with the way out named.
    (folder / "config.ini").write_text("changed\n")
    assert _run("pack", str(folder), "-p", pkg, "-b", "major", "-V", "2.0", "-o", str(out))[0] == 0
    code, _, stderr = _run("upload", zip_path, "-c", content, "-s", sqlite_server.url, env=env)
    assert "--force" in _one_line_error(code, stderr)
    assert _run("upload", zip_path, "-c", content, "-s", sqlite_server.url, "--force", env=env)[0] == 0
    got = httpx.get(f"{sqlite_server.url}/otafiles/{pkg}/major/{pkg}-major-2.0.zip")
    assert got.content == Path(zip_path).read_bytes()


def test_a_zip_that_does_not_match_is_refused_whatever_the_server_says(
    sqlite_server: RunningServer, folder: Path, tmp_path: Path, pkg: str
) -> None:
    out = tmp_path / "dist"
    assert _run("pack", str(folder), "-p", pkg, "-b", "major", "-V", "3.0", "-o", str(out))[0] == 0
    zip_path, content = out / f"{pkg}-major-3.0.zip", str(out / "content.json")
    upload = ["upload", str(zip_path), "-c", content, "-s", sqlite_server.url, "--token", "test-token"]
    assert _run(*upload)[0] == 0
    published = zip_path.read_bytes()
    with open(zip_path, "ab") as tail:
        tail.write(b"x")
    # The server has this version (409), but the local mismatch is what the user needs to hear ...
    code, stdout, stderr = _run(*upload)
    assert "does not match" in _one_line_error(code, stderr)
    assert "already on the server" not in stdout
    # ... and with --force the file is stopped before its end: the published one stays.
    code, _, stderr = _run(*upload, "--force")
    assert "nothing was published" in _one_line_error(code, stderr)
    got = httpx.get(f"{sqlite_server.url}/otafiles/{pkg}/major/{pkg}-major-3.0.zip")
    assert got.content == published


def test_bump_asks_the_server(sqlite_server: RunningServer, folder: Path, tmp_path: Path, pkg: str) -> None:
    out = tmp_path / "dist"
    first = ["pack", str(folder), "-p", pkg, "-b", "beta", "--bump", "minor", "--remote", sqlite_server.url]
    assert _run(*first, "-o", str(out))[0] == 0  # no version yet: the first needs no history
    assert json.loads((out / "content.json").read_text())["version"] == "0.1.0"
    upload = ["upload", str(out / f"{pkg}-beta-0.1.0.zip"), "-c", str(out / "content.json")]
    assert _run(*upload, "-s", sqlite_server.url, "--token", "test-token")[0] == 0
    assert _run(*first[:-4], "--bump", "patch", "--remote", sqlite_server.url, "-o", str(out))[0] == 0
    assert json.loads((out / "content.json").read_text())["version"] == "0.1.1"


def test_errors_are_one_clear_line(
    sqlite_server: RunningServer, folder: Path, tmp_path: Path, pkg: str
) -> None:
    out = tmp_path / "dist"
    code, _, stderr = _run("pack", str(tmp_path / "missing"), "-p", pkg, "-b", "major", "-V", "1.0")
    assert "not a folder" in _one_line_error(code, stderr)
    code, _, stderr = _run("pack", str(folder), "-p", "../evil", "-b", "major", "-V", "1.0")
    assert "invalid package" in _one_line_error(code, stderr)
    code, _, stderr = _run("pack", str(folder), "-p", pkg, "-b", "major", "-V", "latest")
    assert "invalid version" in _one_line_error(code, stderr)
    code, _, stderr = _run("pack", str(folder), "-p", pkg, "-b", "major")
    assert "--version" in _one_line_error(code, stderr)
    code, _, stderr = _run("pack", str(folder), "-p", pkg, "-b", "major", "--bump", "patch")
    assert "--remote" in _one_line_error(code, stderr)
    code, _, stderr = _run("pack", str(folder), "-p", pkg, "-b", "major", "-V", "1", "--depends", "x=>>1")
    assert "requirement" in _one_line_error(code, stderr)

    assert _run("pack", str(folder), "-p", pkg, "-b", "major", "-V", "1.0", "-o", str(out))[0] == 0
    zip_path, content = str(out / f"{pkg}-major-1.0.zip"), str(out / "content.json")
    code, _, stderr = _run("upload", zip_path, "-c", content, "-s", sqlite_server.url, "--token", "wrong")
    assert "token" in _one_line_error(code, stderr)
    code, _, stderr = _run(
        "upload", zip_path, "-c", content, "-s", sqlite_server.url, env={"OTAKIT_TOKEN": ""}
    )
    assert _one_line_error(code, stderr) == (
        "otakit: error: a publisher token is required: pass --token or set OTAKIT_TOKEN"
    )
    dead = f"http://127.0.0.1:{free_port()}"
    code, _, stderr = _run("upload", zip_path, "-c", content, "-s", dead, "--token", "t")
    assert "cannot reach" in _one_line_error(code, stderr)
    code, _, stderr = _run("latest", "-s", dead, "-p", pkg, "-b", "major")
    assert "cannot reach" in _one_line_error(code, stderr)
    code, _, stderr = _run("latest", "-s", sqlite_server.url, "-p", pkg, "-b", "nothing-here")
    assert "no version" in _one_line_error(code, stderr)
    # A zip that does not match its content.json is refused, whether or not the server is there.
    with open(zip_path, "ab") as tail:
        tail.write(b"x")
    code, _, stderr = _run("upload", zip_path, "-c", content, "-s", dead, "--token", "t")
    assert "does not match" in _one_line_error(code, stderr)
    code, _, stderr = _run("upload", zip_path, "-c", str(tmp_path / "nope.json"), "-s", dead)
    _one_line_error(code, stderr)
    os.remove(zip_path)


def test_too_large_for_the_server(tmp_path: Path, pkg: str) -> None:
    with run_server(
        tmp_path, f"sqlite:///{tmp_path / 'ota.db'}", env={"OTAKIT_MAX_UPLOAD_BYTES": "1048576"}
    ) as srv:
        data = os.urandom(4 * 1024 * 1024)
        zip_path = tmp_path / f"{pkg}-main-1.0.zip"
        zip_path.write_bytes(data)
        content = tmp_path / "content.json"
        sha256 = hashlib.sha256(data).hexdigest()
        content.write_text(json.dumps({"package": pkg, "branch": "main", "version": "1.0", "sha256": sha256}))
        code, _, stderr = _run(
            "upload", str(zip_path), "-c", str(content), "-s", srv.url, "--token", "test-token"
        )
    assert "larger than the limit of 1048576 bytes" in _one_line_error(code, stderr)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["--debug", "pack", str(tmp_path / "missing"), "-p", "p", "-b", "b", "-V", "1"]
    )
    assert result.exit_code != 0
    assert result.exception is not None
    assert "not a folder" in str(result.exception)

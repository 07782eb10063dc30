"""``otakit keygen`` and ``otakit pack --sign``; the server returns a signed content.json unchanged."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import httpx
from typer.testing import CliRunner

from otakit.cli.main import app
from otakit.signing import parse_public_key, verify_content
from tests.api_client import upload
from tests.servers import run_server

runner = CliRunner()


def test_keygen_writes_a_private_and_a_public_key(tmp_path: Path) -> None:
    out = tmp_path / "keys" / "nested"
    result = runner.invoke(app, ["keygen", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE((out / "publisher.key").stat().st_mode) == 0o600
    line = (out / "publisher.pub").read_text()
    assert line.startswith("ed25519:")
    assert line.count("\n") == 1
    parse_public_key(line)
    again = runner.invoke(app, ["keygen", "--out", str(out)])
    assert again.exit_code == 1
    assert "refusing to overwrite" in again.stderr


def test_pack_sign_and_the_server_keeps_the_signature(tmp_path: Path) -> None:
    assert runner.invoke(app, ["keygen", "--out", str(tmp_path / "keys")]).exit_code == 0
    src = tmp_path / "src"
    src.mkdir()
    (src / "app.txt").write_text("signed")
    result = runner.invoke(
        app,
        [
            "pack",
            str(src),
            "-p",
            "signed",
            "-b",
            "major",
            "-V",
            "1.0",
            "-o",
            str(tmp_path / "dist"),
            "--sign",
            str(tmp_path / "keys" / "publisher.key"),
        ],
    )
    assert result.exit_code == 0, result.output
    content = json.loads((tmp_path / "dist" / "content.json").read_text())
    trusted = [parse_public_key((tmp_path / "keys" / "publisher.pub").read_text())]
    verify_content(content, trusted)
    with run_server(tmp_path, f"sqlite:///{tmp_path / 'ota.db'}") as server:
        zip_bytes = (tmp_path / "dist" / "signed-major-1.0.zip").read_bytes()
        assert upload(server, content, zip_bytes).status_code == 200
        served = httpx.get(
            f"{server.url}/latestVersion", params={"package": "signed", "branch": "major"}
        ).json()
    assert served["content.json"] == content
    verify_content(served["content.json"], trusted)


def test_pack_sign_with_a_bad_key_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.key").write_text("not a key")
    (tmp_path / "src").mkdir()
    result = runner.invoke(
        app,
        ["pack", str(tmp_path / "src"), "-p", "p", "-b", "b", "-V", "1", "--sign", str(tmp_path / "bad.key")],
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("otakit: error:")
    assert len(result.stderr.strip().splitlines()) == 1
    missing = runner.invoke(
        app,
        [
            "pack",
            str(tmp_path / "src"),
            "-p",
            "p",
            "-b",
            "b",
            "-V",
            "1",
            "--sign",
            str(tmp_path / "nope.key"),
        ],
    )
    assert missing.exit_code == 1
    assert "nope.key" in missing.stderr

"""``otakit bundle create`` end to end: a real server, packages published with dependencies, the CLI as a
subprocess, the bundle read back with ``open_bundle``."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from otakit.bundle import open_bundle
from otakit.pack import pack
from tests.daemon_packages import Publisher, corrupt_on_server
from tests.servers import RunningServer


@pytest.fixture
def publisher(sqlite_server: RunningServer, tmp_path: Path) -> Iterator[Publisher]:
    publisher = Publisher(sqlite_server, tmp_path / "publish")
    yield publisher
    publisher.close()


def _otakit(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTAKIT_")}
    return subprocess.run(
        [sys.executable, "-m", "otakit", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("otakit: error: "), result.stderr
    return lines[0]


def _nothing_left(folder: Path) -> None:
    assert list(folder.iterdir()) == [], list(folder.iterdir())


def _server_file(server: RunningServer, content: dict[str, str]) -> bytes:
    package, branch, version = content["package"], content["branch"], content["version"]
    return (server.files_dir / package / branch / f"{package}-{branch}-{version}.zip").read_bytes()


# -- from a server ------------------------------------------------------------------------------------


def test_a_package_and_its_dependencies_from_the_server(
    sqlite_server: RunningServer, publisher: Publisher, tmp_path: Path, pkg: str
) -> None:
    app, mid, lib = f"{pkg}-app", f"{pkg}-mid", f"{pkg}-lib"
    published = {
        ("lib", "1.0"): publisher.publish(lib, "1.0"),
        ("lib", "1.5"): publisher.publish(lib, "1.5"),
        ("lib", "2.0"): publisher.publish(lib, "2.0"),  # too high for mid
        ("mid", "0.9"): publisher.publish(mid, "0.9"),  # too low for app
        ("mid", "1.0"): publisher.publish(mid, "1.0", depends={lib: ">=1.0,<2"}),
        ("app", "1.0"): publisher.publish(app, "1.0", depends={mid: ">=1.0"}),
        ("app", "1.1"): publisher.publish(app, "1.1", depends={mid: ">=1.0"}),
    }
    publisher.publish(lib, "1.9", branch="beta")  # another branch: never chosen
    publisher.publish(app, "1.2", depends={mid: ">=1.0"}, hold=True)  # held: not the latest

    out = tmp_path / "out" / "app.otabundle"
    out.parent.mkdir()
    result = _otakit(
        "bundle", "create", out, "--server", sqlite_server.url, "--package", app, "--branch", "major"
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(f"{lib} 1.5 (branch major): ")
    assert lines[1].startswith(f"{mid} 1.0 (branch major): ")
    assert lines[2].startswith(f"{app} 1.1 (branch major): ")
    assert all(line.endswith(", unsigned") for line in lines[:3])
    assert lines[3] == f"wrote {out}: 3 package(s), {out.stat().st_size} bytes"
    assert [p.name for p in out.parent.iterdir()] == ["app.otabundle"]  # no temp folder left

    with open_bundle(out) as bundle:
        assert [(p.content.package, p.content.version) for p in bundle.packages] == [
            (lib, "1.5"),
            (mid, "1.0"),
            (app, "1.1"),
        ]
        for short, package in zip(("lib", "mid", "app"), bundle.packages, strict=True):
            published_content = published[(short, package.content.version)]
            assert package.content.raw == published_content  # exactly as published
            dest = tmp_path / package.file
            bundle.extract(package, dest)
            assert dest.read_bytes() == _server_file(sqlite_server, published_content)
            assert hashlib.sha256(dest.read_bytes()).hexdigest() == published_content["sha256"]

    pinned = tmp_path / "pinned.otabundle"
    result = _otakit(
        "bundle", "create", pinned, "-s", sqlite_server.url, "-p", app, "-b", "major", "--version", "1.0"
    )
    assert result.returncode == 0, result.stderr
    with open_bundle(pinned) as bundle:
        assert [(p.content.package, p.content.version) for p in bundle.packages][-1] == (app, "1.0")
        assert len(bundle.packages) == 3


def test_a_package_without_dependencies_and_the_server_from_the_environment(
    sqlite_server: RunningServer, publisher: Publisher, tmp_path: Path, pkg: str
) -> None:
    content = publisher.publish(pkg, "3.0")
    out = tmp_path / "one.otabundle"
    env = {**os.environ, "OTAKIT_SERVER": sqlite_server.url}
    result = subprocess.run(
        [sys.executable, "-m", "otakit", "bundle", "create", str(out), "-p", pkg, "-b", "major"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    with open_bundle(out) as bundle:
        assert [p.content.raw for p in bundle.packages] == [content]


def test_an_unknown_package_or_version_is_one_line(
    sqlite_server: RunningServer, publisher: Publisher, tmp_path: Path, pkg: str
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "x.otabundle"
    error = _one_line_error(
        _otakit("bundle", "create", out, "--server", sqlite_server.url, "--package", pkg, "--branch", "major")
    )
    assert pkg in error
    publisher.publish(pkg, "1.0")
    error = _one_line_error(
        _otakit("bundle", "create", out, "-s", sqlite_server.url, "-p", pkg, "-b", "major", "-V", "9.9")
    )
    assert error == f"otakit: error: {pkg} 9.9 is not on {sqlite_server.url} (branch major)"
    _nothing_left(folder)


def test_an_unsatisfiable_dependency_is_one_line(
    sqlite_server: RunningServer, publisher: Publisher, tmp_path: Path, pkg: str
) -> None:
    app, lib = f"{pkg}-app", f"{pkg}-lib"
    publisher.publish(lib, "1.0")
    publisher.publish(lib, "3.0", branch="beta")  # satisfies, but on another branch
    publisher.publish(app, "1.0", depends={lib: ">=2.0"})
    folder = tmp_path / "out"
    folder.mkdir()
    error = _one_line_error(
        _otakit("bundle", "create", folder / "x.otabundle", "-s", sqlite_server.url, "-p", app, "-b", "major")
    )
    assert error == (
        f"otakit: error: {app} 1.0 needs {lib}>=2.0, which no version on {sqlite_server.url} "
        "(branch major) satisfies"
    )
    publisher.publish(app, "1.1", depends={f"{pkg}-nowhere": ""})
    error = _one_line_error(
        _otakit("bundle", "create", folder / "x.otabundle", "-s", sqlite_server.url, "-p", app, "-b", "major")
    )
    assert f"needs {pkg}-nowhere, which no version" in error
    _nothing_left(folder)


def test_a_dependency_cycle_is_one_line(
    sqlite_server: RunningServer, publisher: Publisher, tmp_path: Path, pkg: str
) -> None:
    a, b = f"{pkg}-a", f"{pkg}-b"
    publisher.publish(a, "1.0", depends={b: ">=1"})
    publisher.publish(b, "1.0", depends={a: ">=1"})
    folder = tmp_path / "out"
    folder.mkdir()
    error = _one_line_error(
        _otakit("bundle", "create", folder / "x.otabundle", "-s", sqlite_server.url, "-p", a, "-b", "major")
    )
    assert error == f"otakit: error: dependency cycle: {a} -> {b} -> {a}"
    _nothing_left(folder)


def test_a_file_that_does_not_match_its_content_on_the_server_is_one_line(
    sqlite_server: RunningServer, publisher: Publisher, tmp_path: Path, pkg: str
) -> None:
    lib = f"{pkg}-lib"
    publisher.publish(lib, "1.0")
    corrupt_on_server(sqlite_server, publisher.publish(lib, "1.1"))
    publisher.publish(pkg, "1.0", depends={lib: ""})
    folder = tmp_path / "out"
    folder.mkdir()
    error = _one_line_error(
        _otakit("bundle", "create", folder / "x.otabundle", "-s", sqlite_server.url, "-p", pkg, "-b", "major")
    )
    assert f"{lib}-major-1.1.zip from {sqlite_server.url} does not match its content.json" in error
    _nothing_left(folder)


def test_a_server_that_cannot_be_reached_is_one_line(tmp_path: Path) -> None:
    error = _one_line_error(
        _otakit(
            "bundle", "create", tmp_path / "x.otabundle", "-s", "http://127.0.0.1:1", "-p", "a", "-b", "b"
        )
    )
    assert "cannot reach the server" in error


# -- from local files ---------------------------------------------------------------------------------


def _packed(
    tmp_path: Path, package: str, version: str, depends: dict[str, str] | None = None
) -> tuple[Path, Path]:
    folder = tmp_path / f"src-{package}"
    folder.mkdir()
    (folder / "main.py").write_text(f"print('{package} {version}')\n")
    result = pack(
        folder,
        tmp_path / f"dist-{package}",
        package=package,
        branch="major",
        version=version,
        depends=depends,
    )
    return result.zip_path, result.content_path


def test_local_zips_and_contents(tmp_path: Path) -> None:
    lib_zip, lib_content = _packed(tmp_path, "lib", "1.0")
    app_zip, app_content = _packed(tmp_path, "app", "2.0", {"lib": ">=1.0"})
    out = tmp_path / "local.otabundle"
    result = _otakit(
        "bundle",
        "create",
        out,
        "--zip",
        app_zip,
        "--content",
        app_content,
        "--zip",
        lib_zip,
        "--content",
        lib_content,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(" (")[0] for line in lines[:2]] == ["lib 1.0", "app 2.0"]
    assert lines[2].startswith(f"wrote {out}: 2 package(s), ")
    with open_bundle(out) as bundle:
        assert [p.content.package for p in bundle.packages] == ["lib", "app"]
        assert bundle.packages[1].content.raw == json.loads(app_content.read_text())
        bundle.extract(bundle.packages[0], tmp_path / "lib.zip")
        assert (tmp_path / "lib.zip").read_bytes() == lib_zip.read_bytes()


def test_local_mode_errors_are_one_line(tmp_path: Path) -> None:
    lib_zip, lib_content = _packed(tmp_path, "lib", "1.0")
    app_zip, app_content = _packed(tmp_path, "app", "2.0")
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "x.otabundle"

    error = _one_line_error(_otakit("bundle", "create", out, "--zip", lib_zip, "--content", app_content))
    assert "does not match the content.json of app 2.0" in error
    error = _one_line_error(
        _otakit("bundle", "create", out, "--zip", lib_zip, "--zip", app_zip, "--content", lib_content)
    )
    assert error == "otakit: error: each --zip needs its --content: got 2 --zip and 1 --content"
    error = _one_line_error(
        _otakit("bundle", "create", out, "--zip", lib_zip, "--content", lib_content, "--package", "lib")
    )
    assert "not both (--package with --zip/--content)" in error
    error = _one_line_error(
        _otakit("bundle", "create", out, "--zip", lib_zip, "--content", lib_content, "--server", "http://x")
    )
    assert "not both (--server with --zip/--content)" in error
    error = _one_line_error(_otakit("bundle", "create", out, "--package", "lib"))
    assert error.endswith(
        "give --server, --package and --branch (or --zip and --content pairs of local files)"
    )
    error = _one_line_error(
        _otakit("bundle", "create", out, "--zip", tmp_path / "nothing.zip", "--content", lib_content)
    )
    assert "nothing.zip is not a file" in error
    _nothing_left(folder)

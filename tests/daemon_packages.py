"""Building and publishing packages for the daemon's end-to-end tests, and reading what hooks wrote."""

from __future__ import annotations

import hashlib
import io
import json
import shlex
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from otakit.pack import pack
from tests.samples import content_for
from tests.servers import RunningServer

__all__ = [
    "HookLine",
    "Publisher",
    "corrupt_on_server",
    "default_files",
    "hook",
    "read_hooks",
    "tree",
    "unsafe_zip",
]


def hook(log: Path, tag: str, then: str = "") -> str:
    """A shell command that appends one line ``tag|package|old|new|local|branch|cwd`` to ``log``."""
    line = (
        f"printf '%s|%s|%s|%s|%s|%s|%s\\n' {shlex.quote(tag)} "
        '"$OTAKIT_PACKAGE" "$OTAKIT_OLD_VERSION" "$OTAKIT_NEW_VERSION" "$OTAKIT_LOCAL" "$OTAKIT_BRANCH" '
        f'"$(pwd -P)" >> {shlex.quote(str(log))}'
    )
    return f"{line}; {then}" if then else line


@dataclass(frozen=True)
class HookLine:
    tag: str
    package: str
    old: str
    new: str
    local: str
    branch: str
    cwd: str


def read_hooks(log: Path) -> list[HookLine]:
    if not log.exists():
        return []
    return [HookLine(*line.split("|")) for line in log.read_text().splitlines()]


def tree(folder: Path) -> dict[str, bytes | str]:
    """Every file (its bytes) and symlink (``-> target``) under ``folder``, by relative path."""
    out: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_symlink():
            out[name] = f"-> {path.readlink()}"
        elif path.is_file():
            out[name] = path.read_bytes()
    return out


def default_files(package: str, version: str) -> dict[str, bytes]:
    return {
        "version.txt": f"{package} {version}\n".encode(),
        f"only-in-{version}.txt": version.encode(),
        "sub/dir/data.bin": hashlib.sha256(f"{package}{version}".encode()).digest() * 64,
    }


class Publisher:
    """Packs folders with ``otakit.pack`` and uploads them to one server, as a developer would.

    One kept-alive connection for all uploads (a new client per upload costs more than the upload).
    """

    def __init__(self, server: RunningServer, workdir: Path) -> None:
        self.server = server
        self.workdir = workdir
        self.remote = server.url + "/"
        self.http = httpx.Client(base_url=server.url, timeout=60)

    def close(self) -> None:
        self.http.close()

    def publish(
        self,
        package: str,
        version: str,
        files: dict[str, bytes] | None = None,
        *,
        branch: str = "major",
        before: str = "",
        after: str = "",
        depends: dict[str, str] | None = None,
        executable: tuple[str, ...] = (),
        hold: bool = False,
    ) -> dict[str, Any]:
        """Pack ``files`` (default: a few files naming the version) and upload (``hold``: held, for a
        rollout); return the content.json."""
        folder = self.workdir / f"src-{package}-{branch}-{version}"
        for name, data in (files if files is not None else default_files(package, version)).items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(0o755 if name in executable else 0o644)
        result = pack(
            folder,
            self.workdir / f"out-{package}-{branch}-{version}",
            package=package,
            branch=branch,
            version=version,
            remote=self.remote,
            before=before,
            after=after,
            depends=depends,
        )
        return self.upload(result.content.raw, result.zip_path.read_bytes(), hold=hold)

    def publish_zip(self, package: str, version: str, data: bytes, **extra: Any) -> dict[str, Any]:
        """Upload a zip built by hand, with a content.json that describes it truthfully."""
        return self.upload(content_for(data, package, version, remote=self.remote, **extra), data)

    def upload(self, content: dict[str, Any], data: bytes, *, hold: bool = False) -> dict[str, Any]:
        parts: list[tuple[str, Any]] = [
            ("content", (None, json.dumps(content), "application/json")),
            ("file", ("package.zip", data, "application/zip")),
        ]
        response = self.http.put(
            "/upload",
            files=parts,
            headers={"Authorization": "Bearer test-token"},
            params={"hold": "1"} if hold else None,
        )
        assert response.status_code == 200, response.text
        return content


def unsafe_zip(kind: str) -> bytes:
    """A zip with one good file and one entry that escapes the folder it is unpacked into."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("good.txt", b"good\n")
        if kind == "dotdot":
            archive.writestr(zipfile.ZipInfo("../evil.txt"), b"evil\n")
        elif kind == "absolute":
            archive.writestr(zipfile.ZipInfo("/abs-otakit-e2e.txt"), b"evil\n")
        elif kind == "symlink":
            _link(archive, "etc-link", "../../etc")
            archive.writestr("etc-link/passwd-copy", b"evil\n")  # written through the link, if followed
        elif kind == "chain":  # each link alone stays inside; a/b/ is the install folder's parent
            _link(archive, "a", ".")
            _link(archive, "a/b", "..")
            archive.writestr("a/b/evil.txt", b"evil\n")
        elif kind == "link-chain":  # no entry passes through a link, but the last link climbs out
            _link(archive, "a", ".")
            _link(archive, "up", "a/a/a/../..")
        elif kind == "long-chain":
            _link(archive, "x", ".")
            _link(archive, "x/y", ".")
            _link(archive, "x/y/z", "../../..")
            archive.writestr("x/y/z/evil.txt", b"evil\n")
        else:
            raise ValueError(kind)
    return buffer.getvalue()


def _link(archive: zipfile.ZipFile, name: str, target: str) -> None:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive.writestr(info, target)


def corrupt_on_server(server: RunningServer, content: dict[str, Any]) -> None:
    """Flip bytes of a stored package file in place (same size), so it no longer matches its sha256."""
    package, branch, version = content["package"], content["branch"], content["version"]
    path = server.files_dir / package / branch / f"{package}-{branch}-{version}.zip"
    size = path.stat().st_size
    with open(path, "r+b") as out:
        for offset in (size // 3, size // 2):
            out.seek(offset)
            byte = out.read(1)
            out.seek(offset)
            out.write(bytes([byte[0] ^ 0xFF]))
    assert path.stat().st_size == size
    assert hashlib.sha256(path.read_bytes()).hexdigest() != content["sha256"]

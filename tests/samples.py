"""The original project's files (``tests/data/legacy``) and small builders for test data."""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["LEGACY", "content_for", "make_zip"]

LEGACY = Path(__file__).resolve().parent / "data" / "legacy"


def make_zip(files: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in (files or {"hello.txt": b"hello\n"}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def content_for(
    data: bytes, package: str, version: str, branch: str = "major", **extra: Any
) -> dict[str, Any]:
    return {
        "package": package,
        "description": "test package",
        "updateInfo": "",
        "version": version,
        "branch": branch,
        "local": "./" + package,
        "remote": "http://127.0.0.1:1/",
        "sha256": hashlib.sha256(data).hexdigest(),
        "BeforeUpdate": "",
        "AfterUpdate": "",
        "dependencies": {},
        **extra,
    }


def dumps(content: dict[str, Any]) -> str:
    return json.dumps(content, ensure_ascii=False)


def write_files(root: Path, files: dict[str, bytes | None], executable: frozenset[str] = frozenset()) -> Path:
    """Files (bytes) and empty folders (None) under ``root``, each file 0755 if named in ``executable``,
    else 0644."""
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = root / name
        if data is None:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, 0o755 if name in executable else 0o644)
    return root


def zip_with_modes(path: Path, entries: list[tuple[str, bytes, int]]) -> Path:
    """A zip written by hand: each entry's name, bytes and Unix mode (type bits included), as given."""
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as archive:
        warnings.simplefilter("ignore")  # a name given twice is a case under test
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = mode << 16
            archive.writestr(info, data)
    return path

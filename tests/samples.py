"""The original project's files (``tests/data/legacy``) and small builders for test data."""

from __future__ import annotations

import hashlib
import io
import json
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

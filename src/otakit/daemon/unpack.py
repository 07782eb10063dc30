"""Unpacking a package zip into a staging folder, refusing anything that would leave it."""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from pathlib import Path

from otakit.daemon.plan import check_member, member_kind
from otakit.errors import VerificationError

__all__ = ["unpack"]

_CHUNK = 1024 * 1024


def unpack(zip_path: Path, dest: Path) -> int:
    """Extract ``zip_path`` into the new folder ``dest``; return the number of files.

    Every entry is checked before anything is written (absolute paths, ``..``, links out of the tree are
    refused), so a bad package leaves nothing behind. Files get 0755 when the zip marks them executable
    for their owner, else 0644; folders 0755.
    """
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise VerificationError(f"the package is not a valid zip: {exc}") from None
    with archive:
        members = archive.infolist()
        links: dict[str, str] = {}
        for info in members:
            target = None
            if member_kind(info) == "symlink":
                target = archive.read(info).decode("utf-8", "replace")
                links[info.filename] = target
            check_member(info.filename, target)
        dest.mkdir(mode=0o755)
        files = 0
        for info in members:
            path = dest / check_member(info.filename)
            kind = member_kind(info)
            if kind == "dir":
                path.mkdir(mode=0o755, parents=True, exist_ok=True)
                continue
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            if kind == "symlink":
                os.symlink(links[info.filename], path)
                continue
            executable = bool((info.external_attr >> 16) & stat.S_IXUSR)
            with archive.open(info) as source, open(path, "wb") as out:
                try:
                    shutil.copyfileobj(source, out, _CHUNK)
                except (zipfile.BadZipFile, EOFError) as exc:  # CRC errors and truncation
                    raise VerificationError(f"the package is damaged at {info.filename}: {exc}") from None
            os.chmod(path, 0o755 if executable else 0o644)
            files += 1
    return files

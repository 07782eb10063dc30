"""Checking a package zip as a whole, and unpacking it into a new staging folder that nothing leaves.

``inspect`` reads the zip's directory and decides (``plan.check_entries``) before any hook runs;
``unpack`` checks again and then writes folders first, files next (each created new, never through a
link) and the package's own symlinks last, so no entry can be written through a link whatever the zip
holds. Every written link is then resolved in the real tree and must stay inside it.
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

from otakit.daemon.plan import Entry, check_entries, member_kind
from otakit.errors import ValidationError, VerificationError

__all__ = ["Listing", "inspect", "unpack"]

_CHUNK = 1024 * 1024
_MAX_LINK_TARGET = 4096  # PATH_MAX: a longer "target" is not a link
_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class Listing:
    """What a checked package unpacks to."""

    entries: list[Entry]
    files: int
    size: int  # bytes of every file once unpacked


def inspect(zip_path: Path) -> Listing:
    """Check every entry of ``zip_path`` without unpacking it: that it is a readable zip, each name,
    link and size, and the tree they make. Raises VerificationError or ValidationError."""
    with _open(zip_path) as archive:
        return _inspect(archive)


def _open(zip_path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise VerificationError(f"the package is not a valid zip: {exc}") from None


def _inspect(archive: zipfile.ZipFile) -> Listing:
    found: list[tuple[str, str, str | None]] = []
    files = size = 0
    for info in archive.infolist():
        if info.flag_bits & 0x1:
            raise VerificationError(f"the package's entry {info.filename!r} is encrypted")
        if info.compress_type not in _METHODS:
            raise VerificationError(
                f"the package's entry {info.filename!r} uses an unsupported compression "
                f"method ({info.compress_type})"
            )
        kind = member_kind(info)
        target = None
        if kind == "symlink":
            if info.file_size > _MAX_LINK_TARGET:
                raise ValidationError(f"unsafe symlink {info.filename!r} in the package: too long a target")
            target = _read(archive, info).decode("utf-8", "replace")
        elif kind == "file":
            files += 1
            size += info.file_size
            _read_header(archive, info)
        found.append((info.filename, kind, target))
    return Listing(check_entries(found), files, size)


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        return archive.read(info)
    except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError) as exc:
        raise VerificationError(f"the package is damaged at {info.filename}: {exc}") from None


def _read_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """Opening an entry reads its local header (which must agree with the directory), not its data."""
    try:
        archive.open(info).close()
    except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError) as exc:
        raise VerificationError(f"the package is damaged at {info.filename}: {exc}") from None


def unpack(zip_path: Path, dest: Path) -> int:
    """Extract ``zip_path`` into the new folder ``dest``; return the number of files.

    Nothing is written unless every entry passes ``inspect`` and the files fit on the disk. Files get
    0755 when the zip marks them executable for their owner, else 0644; folders 0755. On an error
    ``dest`` may hold part of the package: the caller removes it.
    """
    with _open(zip_path) as archive:
        listing = _inspect(archive)
        free = shutil.disk_usage(dest.parent).free
        if listing.size > free:
            raise ValidationError(
                f"the package unpacks to {listing.size} bytes, but only {free} are free at {dest.parent}"
            )
        dest.mkdir(mode=0o755)
        by_name = {info.filename: info for info in archive.infolist()}
        order = {"dir": 0, "file": 1, "symlink": 2}
        for entry in sorted(listing.entries, key=lambda e: (order[e.kind], e.parts)):
            path = dest.joinpath(*entry.parts)
            if entry.kind == "dir":
                path.mkdir(mode=0o755, parents=True, exist_ok=True)
                continue
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            if entry.kind == "symlink":
                assert entry.target is not None
                os.symlink(entry.target, path)
            else:
                _write(archive, by_name[entry.name], path)
        _check_links(dest, listing.entries)
    return listing.files


def _write(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> None:
    executable = bool((info.external_attr >> 16) & stat.S_IXUSR)
    fd = os.open(path, _NEW_FILE, 0o755 if executable else 0o644)
    with archive.open(info) as source, open(fd, "wb") as out:
        try:
            shutil.copyfileobj(source, out, _CHUNK)
        except (zipfile.BadZipFile, EOFError) as exc:  # CRC errors and truncation
            raise VerificationError(f"the package is damaged at {info.filename}: {exc}") from None
        os.fchmod(out.fileno(), 0o755 if executable else 0o644)  # whatever the umask


def _check_links(dest: Path, entries: list[Entry]) -> None:
    """Every symlink, resolved in the real tree, must stay inside ``dest``."""
    root = os.path.realpath(dest)
    for entry in entries:
        if entry.kind == "symlink":
            resolved = os.path.realpath(dest.joinpath(*entry.parts))
            if resolved != root and not resolved.startswith(root + os.sep):
                raise ValidationError(
                    f"unsafe symlink {entry.name!r} -> {entry.target!r}: it points out of the folder"
                )

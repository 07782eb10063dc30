"""The tree manifest of a package: what its zip unpacks to, as one text whose sha256 is ``tree_sha256``.

One line per zip entry, in the zip's order (``otakit pack`` sorts entries by name, a folder's name
ending with ``/``)::

    f <mode as 4 octal digits> <size> <sha256 hex> <path>\\n     a file
    d 0755 <path>/\\n                                            a folder

Paths are UTF-8 and ``/``-separated; a path holding a newline would make the text ambiguous, so it is
refused (``otakit pack`` refuses it too). ``otakit pack`` puts ``tree_sha256`` in content.json, where a
publisher's signature covers it: a device can then check a folder it built from pieces (a delta update)
against the exact tree the publisher packed, modes included.

``manifest_of_zip`` reads a zip, ``manifest_of_folder`` a folder on disk, in the order ``otakit pack``
would write it: a folder unpacked from a packed zip has the zip's ``tree_sha256``.
"""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from otakit.errors import ValidationError

__all__ = [
    "ManifestEntry",
    "check_manifest_path",
    "hash_file",
    "manifest_of_folder",
    "manifest_of_tree",
    "manifest_of_zip",
    "manifest_text",
    "tree_sha256",
]

_CHUNK = 1024 * 1024
_FOLDER_MODE = 0o755
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One file or folder of a tree. ``path`` has no trailing slash, even for a folder (its line adds
    one); a folder's ``mode``, ``size`` and ``sha256`` are not part of its line."""

    kind: Literal["f", "d"]
    path: str
    mode: int = _FOLDER_MODE
    size: int = 0
    sha256: str = ""

    @classmethod
    def folder(cls, path: str) -> ManifestEntry:
        return cls("d", path)

    @classmethod
    def file(cls, path: str, mode: int, size: int, sha256: str) -> ManifestEntry:
        return cls("f", path, mode, size, sha256)

    @property
    def name(self) -> str:
        """The entry's name in a zip, the key ``otakit pack`` sorts by: a folder's ends with ``/``."""
        return self.path + "/" if self.kind == "d" else self.path

    def line(self) -> str:
        """This entry's line of the manifest text, newline included."""
        check_manifest_path(self.path)
        if self.kind == "d":
            return f"d 0755 {self.path}/\n"
        return f"f {self.mode:04o} {self.size} {self.sha256} {self.path}\n"


def check_manifest_path(path: str) -> str:
    """Return ``path`` if it can be a manifest's path: relative, ``/``-separated, no empty, ``.`` or
    ``..`` segment, no newline, NUL or backslash. ValidationError otherwise."""
    if not path:
        raise ValidationError("a path in the tree is empty")
    if "\n" in path:
        raise ValidationError(f"the path {path!r} holds a newline, which a tree manifest cannot list")
    if "\x00" in path or "\\" in path:
        raise ValidationError(f"the path {path!r} holds a NUL or a backslash")
    if path.startswith("/"):
        raise ValidationError(f"the path {path!r} is absolute")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise ValidationError(f"the path {path!r} has an empty, '.' or '..' segment")
    return path


def manifest_text(entries: Iterable[ManifestEntry]) -> str:
    """The manifest text of ``entries``, in their order."""
    return "".join(entry.line() for entry in entries)


def tree_sha256(entries: Iterable[ManifestEntry]) -> str:
    """The sha256 (lower-case hex) of the UTF-8 manifest text of ``entries``."""
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(entry.line().encode("utf-8"))
    return digest.hexdigest()


def manifest_of_zip(path: Path) -> list[ManifestEntry]:
    """The manifest of the zip at ``path``, in the zip's entry order; each file hashed by streaming its
    uncompressed bytes. ValidationError for a damaged zip, a link or device entry, a bad or repeated
    path (such a package gets no manifest, hence no delta)."""
    entries: list[ManifestEntry] = []
    seen: set[str] = set()
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                is_folder = info.filename.endswith("/")
                name = info.filename[:-1] if is_folder else info.filename
                check_manifest_path(name)
                if name in seen:
                    raise ValidationError(f"the zip lists {name!r} twice")
                seen.add(name)
                unix_mode = info.external_attr >> 16
                if is_folder:
                    entries.append(ManifestEntry.folder(name))
                    continue
                if stat.S_IFMT(unix_mode) not in (0, stat.S_IFREG):
                    raise ValidationError(f"the zip's entry {name!r} is not a regular file or folder")
                digest = hashlib.sha256()
                size = 0
                with archive.open(info) as member:
                    while chunk := member.read(_CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                entries.append(ManifestEntry.file(name, unix_mode & 0o7777, size, digest.hexdigest()))
    except (zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError) as exc:
        raise ValidationError(f"{path.name} is not a readable zip: {exc}") from None
    return entries


def hash_file(path: Path) -> tuple[int, int, str]:
    """``(mode, size, sha256)`` of the regular file ``path``, read once without following a link;
    ``mode`` is what ``otakit pack`` stores: 0755 when the owner may execute it, else 0644."""
    fd = os.open(path, _READ_FLAGS)
    with open(fd, "rb", buffering=0) as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValidationError(f"{path} is not a regular file")
        digest = hashlib.sha256()
        size = 0
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        while read := file.readinto(buffer):
            digest.update(view[:read])
            size += read
    return (0o755 if info.st_mode & stat.S_IXUSR else 0o644), size, digest.hexdigest()


def manifest_of_tree(root: Path, order_like: Sequence[ManifestEntry] = ()) -> list[ManifestEntry]:
    """The manifest of the folder ``root``: the entries also in ``order_like`` (same kind and path) in
    its order, then the others in ``otakit pack``'s order (by name, a folder's with ``/``).

    With ``order_like`` set to a zip's manifest, a folder holding exactly that zip's tree gives its
    ``tree_sha256`` whatever order the zip used; any file more, less or changed gives another.
    Symlinks, sockets, FIFOs and devices are refused (ValidationError): a package has none.
    """
    position = {(entry.kind, entry.path): index for index, entry in enumerate(order_like)}
    found = _walk(root)
    found.sort(
        key=lambda e: (0, position[e.kind, e.path], "") if (e.kind, e.path) in position else (1, 0, e.name)
    )
    return found


def manifest_of_folder(root: Path) -> list[ManifestEntry]:
    """The manifest of the folder ``root`` in ``otakit pack``'s order: the ``tree_sha256`` of the zip
    that packing ``root`` would write."""
    return manifest_of_tree(root)


def _walk(root: Path) -> list[ManifestEntry]:
    if not root.is_dir() or root.is_symlink():
        raise ValidationError(f"{root} is not a folder")
    found: list[ManifestEntry] = []
    pending = [""]
    while pending:
        prefix = pending.pop()
        with os.scandir(root / prefix if prefix else root) as listing:
            items = list(listing)
        for item in items:
            path = _relative(prefix, item.name)
            if item.is_symlink():
                raise ValidationError(f"{root} holds the symlink {path}, which a package cannot")
            if item.is_dir(follow_symlinks=False):
                found.append(ManifestEntry.folder(path))
                pending.append(path)
            elif item.is_file(follow_symlinks=False):
                mode, size, sha256 = hash_file(root / path)
                found.append(ManifestEntry.file(path, mode, size, sha256))
            else:
                raise ValidationError(f"{root} holds {path}, which is not a regular file or folder")
    return found


def _relative(prefix: str, name: str) -> str:
    path = f"{prefix}/{name}" if prefix else name
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"the file name {path!r} is not valid UTF-8") from None
    return check_manifest_path(path)

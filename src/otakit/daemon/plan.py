"""The daemon's decisions, free of I/O: what is an update, in which order to install, which zip
entries are safe to unpack."""

from __future__ import annotations

import stat
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from otakit.content import Content
from otakit.dependencies import install_order
from otakit.errors import ValidationError

__all__ = ["Entry", "check_entries", "check_member", "choose", "install_order", "is_upgrade", "member_kind"]


def is_upgrade(installed: Content | None, candidate: Content) -> bool:
    """Only a higher version is an update; nothing installed means anything is."""
    return installed is None or candidate.parsed_version > installed.parsed_version


def choose(spec: SpecifierSet, candidates: Iterable[Content]) -> Content | None:
    """The highest candidate that satisfies ``spec`` (pre-releases only when nothing else does)."""
    by_version: dict[Version, Content] = {}
    for content in candidates:
        by_version.setdefault(content.parsed_version, content)
    allowed = list(spec.filter(by_version))
    return by_version[max(allowed)] if allowed else None


def member_kind(info: zipfile.ZipInfo) -> str:
    """``dir``, ``file`` or ``symlink`` (from the Unix mode when the zip recorded one)."""
    mode = info.external_attr >> 16
    if info.is_dir():
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "file"


def check_member(name: str) -> tuple[str, ...]:
    """The path parts a zip entry unpacks to; ValidationError if its name is not a relative path inside
    the folder (absolute paths, drive letters, backslashes, ``..`` anywhere, NUL)."""
    if (
        not name
        or "\x00" in name
        or "\\" in name
        or name.startswith("/")
        or (len(name) > 1 and name[1] == ":")
    ):
        raise ValidationError(f"unsafe entry {name!r} in the package: not a relative path")
    parts = PurePosixPath(name).parts
    if any(part == ".." for part in parts):
        raise ValidationError(f"unsafe entry {name!r} in the package: it climbs out of the folder")
    if not parts or parts == (".",):
        raise ValidationError(f"unsafe entry {name!r} in the package: it names the folder itself")
    return parts


@dataclass(frozen=True, slots=True)
class Entry:
    """One zip entry as it will be unpacked: its path parts, kind, and a symlink's target."""

    name: str
    parts: tuple[str, ...]
    kind: str  # dir, file or symlink
    target: str | None = None


_MAX_LINK_HOPS = 40  # as the kernel's MAXSYMLINKS


def check_entries(entries: Sequence[tuple[str, str, str | None]]) -> list[Entry]:
    """The entries ``(name, kind, link target)`` of a package, checked as one tree; ValidationError if
    unpacking them could write or point outside the folder.

    Beyond each name (``check_member``): no entry may lie under a symlink of the package (nothing is
    ever written through a link), a path is one thing only (a file or link is not also a folder, nor
    given twice), and every symlink, resolved the way the kernel will resolve it in the unpacked tree
    (through the package's other links, chains included), stays inside the folder.
    """
    checked: list[Entry] = []
    kinds: dict[tuple[str, ...], str] = {}
    for name, kind, target in entries:
        entry = Entry(name, check_member(name), kind, target)
        seen = kinds.get(entry.parts)
        if seen is not None and not (seen == kind == "dir"):
            raise ValidationError(f"unsafe entry {name!r} in the package: its path is given twice")
        kinds[entry.parts] = kind
        checked.append(entry)
    for entry in checked:
        for depth in range(1, len(entry.parts)):
            above = kinds.get(entry.parts[:depth])
            if above == "symlink":
                raise ValidationError(
                    f"unsafe entry {entry.name!r} in the package: it lies under the symlink "
                    f"{'/'.join(entry.parts[:depth])!r}"
                )
            if above == "file":
                raise ValidationError(
                    f"unsafe entry {entry.name!r} in the package: {'/'.join(entry.parts[:depth])!r} "
                    "is a file, not a folder"
                )
    links = {entry.parts: entry.target or "" for entry in checked if entry.kind == "symlink"}
    for parts in links:
        _resolve_link(parts, links, 0)
    return checked


def _resolve_link(link: tuple[str, ...], links: Mapping[tuple[str, ...], str], hops: int) -> list[str]:
    """Where ``link`` points, as path parts inside the tree; ValidationError if it leaves it (or loops)."""
    name, target = "/".join(link), links[link]
    if not target or target.startswith("/") or "\x00" in target or "\\" in target:
        raise ValidationError(f"unsafe symlink {name!r} -> {target!r} in the package")
    if hops > _MAX_LINK_HOPS:
        raise ValidationError(f"unsafe symlink {name!r} -> {target!r}: too many levels of links")
    where = list(link[:-1])
    for part in PurePosixPath(target).parts:
        if part == "..":
            if not where:
                raise ValidationError(f"unsafe symlink {name!r} -> {target!r}: it points out of the folder")
            where.pop()
        elif part != ".":
            where.append(part)
            if tuple(where) in links:  # the kernel follows a link met on the way: so do we
                where = _resolve_link(tuple(where), links, hops + 1)
    return where

"""The daemon's decisions, free of I/O: what is an update, in which order to install, which zip
entries are safe to unpack."""

from __future__ import annotations

import stat
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from otakit.content import Content
from otakit.errors import ValidationError

__all__ = ["check_member", "choose", "install_order", "is_upgrade", "member_kind"]


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


def install_order(root: str, requires: Mapping[str, Iterable[str]]) -> list[str]:
    """Packages reachable from ``root``, each after everything it requires (``root`` last).

    ``requires[name]`` lists the packages ``name`` needs installed first. A cycle is an error.
    """
    order: list[str] = []
    state: dict[str, str] = {}  # "visiting" or "done"

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = [*path[path.index(name) :], name]
            raise ValidationError(f"dependency cycle: {' -> '.join(cycle)}")
        state[name] = "visiting"
        for needed in sorted(requires.get(name, ())):
            if needed != name:
                visit(needed, [*path, name])
        state[name] = "done"
        order.append(name)

    visit(root, [])
    return order


def member_kind(info: zipfile.ZipInfo) -> str:
    """``dir``, ``file`` or ``symlink`` (from the Unix mode when the zip recorded one)."""
    mode = info.external_attr >> 16
    if info.is_dir():
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "file"


def check_member(name: str, link_target: str | None = None) -> PurePosixPath:
    """The relative path a zip entry unpacks to; ValidationError if it would leave the folder.

    Refused: absolute paths, drive letters, backslashes, ``..`` anywhere, NUL, and symlinks whose target
    is absolute or climbs out of the tree from where the link sits.
    """
    if (
        not name
        or "\x00" in name
        or "\\" in name
        or name.startswith("/")
        or (len(name) > 1 and name[1] == ":")
    ):
        raise ValidationError(f"unsafe entry {name!r} in the package: not a relative path")
    path = PurePosixPath(name)
    if any(part == ".." for part in path.parts):
        raise ValidationError(f"unsafe entry {name!r} in the package: it climbs out of the folder")
    if link_target is not None:
        if not link_target or link_target.startswith("/") or "\x00" in link_target:
            raise ValidationError(f"unsafe symlink {name!r} -> {link_target!r} in the package")
        depth = len(path.parent.parts)
        for part in PurePosixPath(link_target).parts:
            depth += -1 if part == ".." else (0 if part == "." else 1)
            if depth < 0:
                raise ValidationError(
                    f"unsafe symlink {name!r} -> {link_target!r}: it points out of the folder"
                )
    return path

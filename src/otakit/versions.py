"""Version logic: parse, order, bump, and a sortable key for the database.

Versions follow PEP 440 (``packaging.version.Version``); SemVer-style strings such as ``1.2.3-rc.1``
parse too. A version is stored and served as written; ``version_key`` maps it to an ASCII string whose
byte order is the version order, so that ``ORDER BY version_key DESC LIMIT 1`` on an index finds the
highest version, and ``1.0`` and ``1.0.0`` (equal versions) get the same key.
"""

from __future__ import annotations

import re
from typing import Literal

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from otakit.errors import ValidationError

__all__ = [
    "MAX_VERSION_LENGTH",
    "bump",
    "parse_specifier",
    "parse_version",
    "version_key",
]

MAX_VERSION_LENGTH = 64
# What a version may look like as written: it becomes part of a file name, so no spaces, slashes or NUL.
_WRITTEN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+!_-]*$")
_PRE_RANK = {"a": "1", "b": "2", "rc": "3"}


def parse_version(value: object) -> Version:
    """Parse a version as written in content.json or a URL; raise ValidationError when it is not one."""
    if not isinstance(value, str) or not value:
        raise ValidationError("version is required")
    if len(value) > MAX_VERSION_LENGTH or _WRITTEN_RE.fullmatch(value) is None:
        raise ValidationError(f"invalid version {value[:80]!r}: not a PEP 440 version")
    try:
        return Version(value)
    except InvalidVersion:
        raise ValidationError(f"invalid version {value!r}: not a PEP 440 version") from None


def _num(n: int) -> str:
    digits = str(n)
    # Two-digit length prefix: numbers of different length sort by length first. A version string is at
    # most 64 characters, so no component has 100 digits.
    return f"{len(digits):02d}{digits}"


def version_key(version: Version | str) -> str:
    """An ASCII string whose lexicographic (binary) order equals PEP 440 order.

    It mirrors ``packaging``'s own comparison key: epoch, release without trailing zeros, pre-release
    (dev-only releases sort before any pre-release), post-release, dev-release, local segment.
    """
    v = parse_version(version) if isinstance(version, str) else version
    out = [_num(v.epoch)]
    release = list(v.release)
    while release and release[-1] == 0:
        release.pop()
    out.extend(_num(part) for part in release)
    out.append("!")  # ends the release; sorts before any digit, so 1.2 < 1.2.1
    if v.pre is None and v.post is None and v.dev is not None:
        out.append("0")  # 1.0.dev1 < 1.0a1
    elif v.pre is None:
        out.append("4")  # a final release sorts after its pre-releases
    else:
        out.append(_PRE_RANK[v.pre[0]] + _num(v.pre[1]))
    out.append("0" if v.post is None else "1" + _num(v.post))
    out.append("1" if v.dev is None else "0" + _num(v.dev))
    if v.local is None:
        out.append("0")
    else:
        out.append("1")
        for part in v.local.split("."):
            # packaging: numeric parts sort after alphanumeric ones, numerically among themselves.
            out.append("2" + _num(int(part)) if part.isdigit() else "1" + part.lower() + "!")
        out.append("!")
    return "".join(out)


def parse_specifier(value: str) -> SpecifierSet:
    """A dependency requirement: a PEP 440 specifier set, or a bare version meaning exactly that one.

    ``""`` means any version.
    """
    text = value.strip()
    if not text:
        return SpecifierSet()
    if text[0].isalnum():  # a bare version, as the original project wrote dependencies
        parse_version(text)
        return SpecifierSet(f"=={text}")
    try:
        return SpecifierSet(text)
    except InvalidSpecifier:
        raise ValidationError(f"invalid version requirement {value!r}") from None


def bump(current: Version | None, part: Literal["major", "minor", "patch"]) -> str:
    """The next release after ``current`` (``None``: no version yet, the first is 0.1.0 / 1.0.0 / 0.0.1)."""
    major, minor, patch = ([*list(current.release), 0, 0, 0])[:3] if current is not None else [0, 0, 0]
    if part == "major":
        return f"{major + 1}.0.0"
    if part == "minor":
        return f"{major}.{minor + 1}.0"
    if current is not None and current.is_prerelease and len(current.release) >= 3:
        return f"{major}.{minor}.{patch}"  # 1.2.3rc1 -> 1.2.3
    return f"{major}.{minor}.{patch + 1}"

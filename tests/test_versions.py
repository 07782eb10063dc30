from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from otakit.errors import ValidationError
from otakit.versions import bump, parse_specifier, parse_version, version_key

ORDERED = [
    "0.0.1", "0.0.2", "0.0.9", "0.0.10", "0.1.0.dev1", "0.1.0a1", "0.1.0b2", "0.1.0rc1", "0.1.0",
    "0.1.0+local.1", "0.1.0+local.2", "0.1.0+local.10", "0.1.0.post1", "0.1.1", "1.0", "1.0.1",
    "1.2.3-rc.1", "1.2.3", "2.0.0", "10.0.0", "1!0.1",
]  # fmt: skip


def test_key_orders_like_pep440() -> None:
    shuffled = ORDERED[:]
    random.Random(7).shuffle(shuffled)
    assert sorted(shuffled, key=version_key) == ORDERED
    assert version_key("0.0.10") > version_key("0.0.9")  # not string order


def test_equal_versions_share_a_key() -> None:
    assert version_key("1.0") == version_key("1.0.0") == version_key("1")
    assert version_key("1.2.3-rc.1") == version_key("1.2.3rc1")
    assert version_key("1.0") != version_key("1.0.1")


_part = st.integers(min_value=0, max_value=10**12)
versions = st.builds(
    lambda epoch, release, pre, post, dev, local: Version(
        (f"{epoch}!" if epoch else "")
        + ".".join(map(str, release))
        + (f"{pre[0]}{pre[1]}" if pre else "")
        + (f".post{post}" if post is not None else "")
        + (f".dev{dev}" if dev is not None else "")
        + (f"+{local}" if local else "")
    ),
    st.integers(0, 3),
    st.lists(st.integers(0, 10**6), min_size=1, max_size=4),
    st.none() | st.tuples(st.sampled_from(["a", "b", "rc"]), st.integers(0, 50)),
    st.none() | st.integers(0, 50),
    st.none() | st.integers(0, 50),
    st.none() | st.sampled_from(["abc", "1", "abc.2", "2.abc", "10", "ubuntu.1"]),
)


@given(versions, versions)
def test_key_order_matches_packaging(a: Version, b: Version) -> None:
    ka, kb = version_key(a), version_key(b)
    assert (ka < kb) == (a < b)
    assert (ka == kb) == (a == b)


@pytest.mark.parametrize(
    "bad", ["", "abc", "1.0 ", " 1.0", "1..0", "../1.0", "1.0/2", "1.0\x00", "1" * 65, "1.0;rm", "\uff11.0"]
)
def test_bad_versions_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        parse_version(bad)


def test_parse_keeps_semver_style() -> None:
    assert parse_version("1.2.3-rc.1") == Version("1.2.3rc1")


def test_specifiers() -> None:
    assert parse_specifier("0.0.1") == SpecifierSet("==0.0.1")  # a bare version means exactly it
    assert parse_specifier(">=1.2,<2") == SpecifierSet(">=1.2,<2")
    assert parse_specifier("") == SpecifierSet()
    with pytest.raises(ValidationError):
        parse_specifier("=>1")
    with pytest.raises(ValidationError):
        parse_specifier("1.0 and more")


@pytest.mark.parametrize(
    ("current", "part", "expected"),
    [
        (None, "patch", "0.0.1"),
        (None, "minor", "0.1.0"),
        (None, "major", "1.0.0"),
        ("1.2.3", "patch", "1.2.4"),
        ("1.2.3", "minor", "1.3.0"),
        ("1.2.3", "major", "2.0.0"),
        ("1.2", "patch", "1.2.1"),
        ("1.2.3rc1", "patch", "1.2.3"),
    ],
)
def test_bump(current: str | None, part: str, expected: str) -> None:
    assert bump(Version(current) if current else None, part) == expected  # type: ignore[arg-type]

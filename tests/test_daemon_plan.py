from __future__ import annotations

import pytest
from packaging.specifiers import SpecifierSet

from otakit.content import Content, parse_content
from otakit.daemon.plan import check_member, choose, install_order, is_upgrade
from otakit.errors import ValidationError


def _c(version: str, package: str = "app") -> Content:
    return parse_content({"package": package, "version": version, "branch": "major", "sha256": "a" * 64})


def test_only_a_higher_version_is_an_upgrade() -> None:
    assert is_upgrade(None, _c("0.0.1"))
    assert is_upgrade(_c("0.0.9"), _c("0.0.10"))
    assert not is_upgrade(_c("0.0.10"), _c("0.0.9"))
    assert not is_upgrade(_c("1.0"), _c("1.0.0"))  # the same version
    assert is_upgrade(_c("1.0rc1"), _c("1.0"))


def test_choose_the_highest_satisfying() -> None:
    candidates = [_c(v) for v in ["1.0", "1.5", "2.0", "2.1rc1"]]
    assert choose(SpecifierSet(">=1.0,<2"), candidates) == candidates[1]
    assert choose(SpecifierSet("==1.0"), candidates) == candidates[0]
    assert choose(SpecifierSet(""), candidates) == candidates[2]  # no pre-release while a final one fits
    assert choose(SpecifierSet(">2.0"), candidates) == candidates[3]  # a pre-release when only it fits
    assert choose(SpecifierSet(">=5"), candidates) is None


def test_install_order_puts_dependencies_first() -> None:
    assert install_order("a", {"a": {"b"}, "b": {"c"}, "c": set()}) == ["c", "b", "a"]
    diamond = install_order("a", {"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()})
    assert diamond[0] == "d"
    assert diamond[-1] == "a"
    assert diamond.count("d") == 1
    assert install_order("a", {"a": {"a"}}) == ["a"]  # a package listing itself is no cycle


@pytest.mark.parametrize("graph", [{"a": {"b"}, "b": {"a"}}, {"a": {"b"}, "b": {"c"}, "c": {"a"}}])
def test_a_cycle_is_an_error(graph: dict[str, set[str]]) -> None:
    with pytest.raises(ValidationError, match="dependency cycle: a -> b"):
        install_order("a", graph)


@pytest.mark.parametrize("name", ["bin/app", "a/b/c.txt", "dir/", "./x", "a..b"])
def test_safe_members(name: str) -> None:
    check_member(name)


@pytest.mark.parametrize(
    "name", ["", "/etc/passwd", "../x", "a/../../x", "a/..", "C:/x", "c:x", "a\\..\\x", "a\x00b"]
)
def test_unsafe_members_are_refused(name: str) -> None:
    with pytest.raises(ValidationError, match="unsafe"):
        check_member(name)


@pytest.mark.parametrize(
    ("name", "target"), [("link", "a/b"), ("a/link", "../b"), ("a/b/l", "../../c"), ("l", ".")]
)
def test_symlinks_inside_the_tree(name: str, target: str) -> None:
    check_member(name, target)


@pytest.mark.parametrize(
    ("name", "target"), [("l", "/etc"), ("l", ".."), ("a/l", "../../x"), ("a/l", "b/../../../x"), ("l", "")]
)
def test_symlinks_leaving_the_tree_are_refused(name: str, target: str) -> None:
    with pytest.raises(ValidationError, match="unsafe symlink"):
        check_member(name, target)

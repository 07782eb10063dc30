from __future__ import annotations

import re

import pytest
from packaging.specifiers import SpecifierSet

from otakit.content import Content, parse_content
from otakit.daemon.plan import check_entries, check_member, choose, install_order, is_upgrade
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


def _links(*pairs: tuple[str, str]) -> list[tuple[str, str, str | None]]:
    return [(name, "symlink", target) for name, target in pairs]


@pytest.mark.parametrize(
    ("name", "target"), [("link", "a/b"), ("a/link", "../b"), ("a/b/l", "../../c"), ("l", ".")]
)
def test_symlinks_inside_the_tree(name: str, target: str) -> None:
    [entry] = check_entries(_links((name, target)))
    assert entry.target == target


@pytest.mark.parametrize(
    ("name", "target"), [("l", "/etc"), ("l", ".."), ("a/l", "../../x"), ("a/l", "b/../../../x"), ("l", "")]
)
def test_symlinks_leaving_the_tree_are_refused(name: str, target: str) -> None:
    with pytest.raises(ValidationError, match="unsafe symlink"):
        check_entries(_links((name, target)))


@pytest.mark.parametrize(
    "links",
    [
        # each link alone stays inside; resolved through the others, the last one climbs out
        [("a", "."), ("b", "a/..")],
        [("a", "."), ("b", "a/a/a/..")],
        [("d/up", ".."), ("x", "d/up/..")],
        [("a", "b/c"), ("b", "."), ("c", "d/.."), ("e", "a/..")],
        [("one", "two"), ("two", "three"), ("three", "d/.."), ("d/x", "../one/..")],
    ],
)
def test_link_chains_are_resolved_as_the_kernel_does(links: list[tuple[str, str]]) -> None:
    for name, target in links:  # alone, each stays inside: only the chain climbs out
        check_entries(_links((name, target)))
    with pytest.raises(ValidationError, match="points out of the folder"):
        check_entries(_links(*links))


def test_chains_that_stay_inside_are_kept() -> None:
    links = [("d/e/up", ".."), ("x", "d/e/up/up"), ("y", "x/e")]
    assert [entry.target for entry in check_entries(_links(*links))] == ["..", "d/e/up/up", "x/e"]


def test_a_link_loop_is_refused() -> None:
    with pytest.raises(ValidationError, match="too many levels"):
        check_entries(_links(("a", "b"), ("b", "a")))


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ([("a", "symlink", "."), ("a/b", "symlink", "..")], "under the symlink 'a'"),
        ([("a", "symlink", "d"), ("a/x", "file", None)], "under the symlink 'a'"),
        ([("a", "symlink", "d"), ("a/sub/", "dir", None)], "under the symlink 'a'"),
        ([("a/x", "file", None), ("a", "symlink", "d")], "under the symlink 'a'"),
        ([("f", "file", None), ("f/x", "file", None)], "'f' is a file"),
        ([("f", "file", None), ("f", "file", None)], "given twice"),
        ([("f", "file", None), ("./f", "symlink", "g")], "given twice"),
        ([("d/", "dir", None), ("d", "symlink", ".")], "given twice"),
        ([("./", "dir", None)], "names the folder itself"),
    ],
)
def test_nothing_is_written_through_a_link_or_twice(
    entries: list[tuple[str, str, str | None]], reason: str
) -> None:
    with pytest.raises(ValidationError, match="unsafe entry.*" + re.escape(reason)):
        check_entries(entries)


def test_a_folder_may_be_listed_twice() -> None:
    assert len(check_entries([("d/", "dir", None), ("d/", "dir", None), ("d/f", "file", None)])) == 3

from __future__ import annotations

import hashlib
import json
import os
import string
import tempfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otakit.daemon.unpack import unpack
from otakit.errors import ValidationError
from otakit.manifest import (
    ManifestEntry,
    check_manifest_path,
    manifest_of_folder,
    manifest_of_tree,
    manifest_of_zip,
    manifest_text,
    tree_sha256,
)
from otakit.pack import pack
from tests.samples import write_files, zip_with_modes

SHA_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SHA_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_the_manifest_text_is_the_documented_formula() -> None:
    entries = [
        ManifestEntry.file("a-b", 0o644, 3, SHA_ABC),
        ManifestEntry.folder("a"),
        ManifestEntry.file("a/run", 0o755, 0, SHA_EMPTY),
        ManifestEntry.folder("a/empty"),
    ]
    expected = (
        f"f 0644 3 {SHA_ABC} a-b\n"
        "d 0755 a/\n"
        f"f 0755 0 {SHA_EMPTY} a/run\n"
        "d 0755 a/empty/\n"
    )  # fmt: skip
    assert manifest_text(entries) == expected
    assert tree_sha256(entries) == hashlib.sha256(expected.encode("utf-8")).hexdigest()
    assert tree_sha256([]) == SHA_EMPTY
    unicode = [ManifestEntry.file("dé jà/ü.txt", 0o644, 3, SHA_ABC)]
    assert manifest_text(unicode) == f"f 0644 3 {SHA_ABC} dé jà/ü.txt\n"
    assert tree_sha256(unicode) == hashlib.sha256(manifest_text(unicode).encode("utf-8")).hexdigest()


def test_pack_writes_the_tree_sha256_of_its_zip_and_folder(tmp_path: Path) -> None:
    src = write_files(
        tmp_path / "src",
        {"a-b": b"abc", "a/run": b"", "a/empty": None, "a.txt": b"abc", "z/y/x/deep": b"deep",
         "ünï cödé/fïlé ☃": b"snow", "top-empty": None},
        executable=frozenset({"a/run"}),
    )  # fmt: skip
    result = pack(src, tmp_path / "out", package="p", branch="b", version="1.0")
    content = json.loads(result.content_path.read_text("utf-8"))
    from_zip = manifest_of_zip(result.zip_path)
    assert content["tree_sha256"] == tree_sha256(from_zip)
    assert manifest_text(from_zip).splitlines()[:5] == [
        f"f 0644 3 {SHA_ABC} a-b",  # '-' sorts before '.' and '/'
        f"f 0644 3 {SHA_ABC} a.txt",
        "d 0755 a/",
        "d 0755 a/empty/",
        f"f 0755 0 {SHA_EMPTY} a/run",
    ]
    with zipfile.ZipFile(result.zip_path) as archive:
        assert [e.name for e in from_zip] == archive.namelist()
    unpack(result.zip_path, tmp_path / "unpacked")  # as a device unpacks it
    assert manifest_of_folder(tmp_path / "unpacked") == from_zip
    assert manifest_of_folder(src) == from_zip


def test_the_executable_bit_and_every_byte_count(tmp_path: Path) -> None:
    src = write_files(tmp_path / "src", {"run": b"#!/bin/sh\n", "data": b"1"})
    first = pack(src, tmp_path / "o1", package="p", branch="b", version="1.0").content.raw["tree_sha256"]
    os.chmod(src / "run", 0o700)
    second = pack(src, tmp_path / "o2", package="p", branch="b", version="1.0").content.raw["tree_sha256"]
    (src / "data").write_bytes(b"2")
    third = pack(src, tmp_path / "o3", package="p", branch="b", version="1.0").content.raw["tree_sha256"]
    assert len({first, second, third}) == 3
    assert tree_sha256(manifest_of_folder(src)) == third


@pytest.mark.parametrize(
    "path", ["", "/abs", "a//b", "a/./b", "../up", "a/..", "a/", "new\nline", "nul\x00", "back\\slash", "."]
)
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(ValidationError):
        check_manifest_path(path)


@pytest.mark.parametrize("path", ["a", "a/b", "..a", "a..", ".hidden/x", "sp ace", "ünï/cödé", "a\rb"])
def test_plain_paths_pass(path: str) -> None:
    assert check_manifest_path(path) == path


def test_pack_refuses_a_newline_in_a_name(tmp_path: Path) -> None:
    src = write_files(tmp_path / "src", {"ok": b"1", "bad\nname": b"2"})
    with pytest.raises(ValidationError, match="newline"):
        pack(src, tmp_path / "out", package="p", branch="b", version="1.0")
    src2 = write_files(tmp_path / "src2", {"dir\nx/file": b"2"})
    with pytest.raises(ValidationError, match="newline"):
        pack(src2, tmp_path / "out", package="p", branch="b", version="1.0")


def test_a_folder_with_links_or_special_files_has_no_manifest(tmp_path: Path) -> None:
    linked = write_files(tmp_path / "linked", {"real": b"x"})
    (linked / "link").symlink_to("real")
    with pytest.raises(ValidationError, match="symlink"):
        manifest_of_folder(linked)
    special = write_files(tmp_path / "special", {"real": b"x"})
    os.mkfifo(special / "fifo")
    with pytest.raises(ValidationError, match="not a regular file"):
        manifest_of_folder(special)
    with pytest.raises(ValidationError):
        manifest_of_folder(tmp_path / "missing")


def test_a_zip_in_any_order_matches_its_folder_listed_like_it(tmp_path: Path) -> None:
    z = zip_with_modes(
        tmp_path / "h.zip",
        [("b/", b"", 0o40755), ("b/two", b"2", 0o100755), ("a", b"abc", 0o100644), ("b/one", b"", 0o100644)],
    )
    from_zip = manifest_of_zip(z)
    assert [e.path for e in from_zip] == ["b", "b/two", "a", "b/one"]
    assert from_zip[1] == ManifestEntry.file("b/two", 0o755, 1, hashlib.sha256(b"2").hexdigest())
    unpack(z, tmp_path / "u")
    assert tree_sha256(manifest_of_tree(tmp_path / "u", order_like=from_zip)) == tree_sha256(from_zip)
    assert tree_sha256(manifest_of_folder(tmp_path / "u")) != tree_sha256(from_zip)  # pack's order
    (tmp_path / "u" / "extra").write_bytes(b"")
    assert tree_sha256(manifest_of_tree(tmp_path / "u", order_like=from_zip)) != tree_sha256(from_zip)


@pytest.mark.parametrize(
    "entries",
    [
        [("a", b"1", 0o100644), ("a", b"2", 0o100644)],  # twice
        [("link", b"target", 0o120777)],  # a symlink
        [("../up", b"x", 0o100644)],
        [("new\nline", b"x", 0o100644)],
    ],
)
def test_zips_without_a_manifest(tmp_path: Path, entries: list[tuple[str, bytes, int]]) -> None:
    z = zip_with_modes(tmp_path / "bad.zip", entries)
    with pytest.raises(ValidationError):
        manifest_of_zip(z)


_NAMES = st.sampled_from(["a", "b", "a-b", "a.txt", "é", "x y", "Z"])
_TREES = st.dictionaries(
    st.lists(_NAMES, min_size=1, max_size=3).map("/".join),
    st.one_of(st.none(), st.tuples(st.binary(max_size=64), st.booleans())),
    max_size=8,
)


@settings(max_examples=40, deadline=None)
@given(spec=_TREES)
def test_any_packed_tree_unpacks_to_its_tree_sha256(spec: dict[str, tuple[bytes, bool] | None]) -> None:
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        src = root / "src"
        src.mkdir()
        for name, value in sorted(spec.items()):
            path = src / name
            if any(p.is_file() for p in [path, *path.parents]) or path.is_dir():
                continue  # a file where a folder is wanted, or the reverse: not this tree
            if value is None:
                path.mkdir(parents=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(value[0])
                os.chmod(path, 0o755 if value[1] else 0o644)
        result = pack(src, root / "out", package="p", branch="b", version="1.0")
        unpack(result.zip_path, root / "unpacked")
        expected = result.content.raw["tree_sha256"]
        assert tree_sha256(manifest_of_zip(result.zip_path)) == expected
        assert tree_sha256(manifest_of_folder(root / "unpacked")) == expected
        assert set(string.hexdigits.lower()) >= set(expected)

"""Offline bundles, the format: written in install order, zips checked, hostile tars refused at open."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from otakit.bundle import (
    MANIFEST_NAME,
    Bundle,
    BundleItem,
    dependency_order,
    open_bundle,
    write_bundle,
)
from otakit.content import Content, parse_content
from otakit.errors import ValidationError, VerificationError
from otakit.signing import (
    generate_private_key,
    parse_public_key,
    public_key_line,
    sign_content,
    verify_content,
)
from tests.samples import content_for, make_zip


def _package(
    folder: Path, package: str, version: str, depends: dict[str, str] | None = None, **extra: Any
) -> BundleItem:
    """A zip on disk and its truthful content."""
    data = make_zip({f"{package}.txt": f"{package} {version}\n".encode() * 50})
    path = folder / f"{package}-{version}.zip"
    path.write_bytes(data)
    raw = content_for(data, package, version, dependencies=depends or {}, **extra)
    return BundleItem(parse_content(raw), path)


@pytest.fixture
def chain(tmp_path: Path) -> list[BundleItem]:
    """app needs mid, mid needs lib: given in the wrong order (app, lib, mid)."""
    folder = tmp_path / "zips"
    folder.mkdir()
    return [
        _package(folder, "app", "2.0", {"mid": ">=1.0"}),
        _package(folder, "lib", "1.5"),
        _package(folder, "mid", "1.0.1", {"lib": ">=1.0,<2"}),
    ]


def _names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# -- writing and reading back -----------------------------------------------------------------------


def test_round_trip_in_install_order(chain: list[BundleItem], tmp_path: Path) -> None:
    out = tmp_path / "app.otabundle"
    write_bundle(out, chain)
    assert _names(out) == [MANIFEST_NAME, "lib-major-1.5.zip", "mid-major-1.0.1.zip", "app-major-2.0.zip"]
    assert _leftovers(tmp_path) == []
    with tarfile.open(out) as tar:
        manifest = json.loads(tar.extractfile(MANIFEST_NAME).read())  # type: ignore[union-attr]
    assert manifest["format"] == 1
    assert isinstance(manifest["created"], int)
    assert [entry["file"] for entry in manifest["packages"]] == [
        "lib-major-1.5.zip",
        "mid-major-1.0.1.zip",
        "app-major-2.0.zip",
    ]

    by_name = {item.content.package: item for item in chain}
    with open_bundle(out) as bundle:
        assert [p.content.package for p in bundle.packages] == ["lib", "mid", "app"]
        assert bundle.created == manifest["created"]
        for package in bundle.packages:
            source = by_name[package.content.package]
            assert package.content.raw == source.content.raw
            assert package.file == source.content.file_name
            assert package.size == source.zip_path.stat().st_size
            dest = tmp_path / f"got-{package.file}"
            bundle.extract(package, dest)
            assert dest.read_bytes() == source.zip_path.read_bytes()
            assert dest.stat().st_mode & 0o777 == 0o600
        assert [c.package for c in bundle.contents()] == ["lib", "mid", "app"]
        assert bundle.find("mid") == bundle.packages[1]
        assert bundle.find("nothing") is None


def test_already_ordered_items_keep_their_order(tmp_path: Path) -> None:
    folder = tmp_path
    items = [
        _package(folder, "b", "1.0"),
        _package(folder, "a", "1.0"),
        _package(folder, "c", "1.0", {"a": ""}),
    ]
    assert [c.package for c in dependency_order([i.content for i in items])] == ["b", "a", "c"]
    write_bundle(tmp_path / "x.otabundle", items)
    with open_bundle(tmp_path / "x.otabundle") as bundle:
        assert [p.content.package for p in bundle.packages] == ["b", "a", "c"]


def test_signatures_travel_untouched(tmp_path: Path) -> None:
    key = generate_private_key()
    data = make_zip()
    zip_path = tmp_path / "s.zip"
    zip_path.write_bytes(data)
    signed = sign_content(content_for(data, "signed", "1.0"), key)
    write_bundle(tmp_path / "s.otabundle", [BundleItem(parse_content(signed), zip_path)])
    with open_bundle(tmp_path / "s.otabundle") as bundle:
        (content,) = bundle.contents()
        assert content.raw == signed
        verify_content(content.raw, [parse_public_key(public_key_line(key))])


def test_a_zip_that_does_not_match_its_content_is_refused(chain: list[BundleItem], tmp_path: Path) -> None:
    out = tmp_path / "bad.otabundle"
    chain[1].zip_path.write_bytes(chain[1].zip_path.read_bytes() + b"x")
    with pytest.raises(
        VerificationError, match=r"lib-1\.5\.zip does not match the content\.json of lib 1\.5"
    ):
        write_bundle(out, chain)
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_an_existing_bundle_is_replaced_or_kept_whole(chain: list[BundleItem], tmp_path: Path) -> None:
    out = tmp_path / "app.otabundle"
    write_bundle(out, chain[1:2])
    before = out.read_bytes()
    chain[0].zip_path.write_bytes(b"not the zip")
    with pytest.raises(VerificationError):
        write_bundle(out, chain)
    assert out.read_bytes() == before
    write_bundle(out, chain[1:])
    assert _names(out) == [MANIFEST_NAME, "lib-major-1.5.zip", "mid-major-1.0.1.zip"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda f: [], "at least one package"),
        (lambda f: [_package(f, "a", "1.0"), _package(f, "a", "2.0")], "package a is given twice"),
        (
            lambda f: [_package(f, "a", "1.0", {"b": ""}), _package(f, "b", "1.0", {"a": ""})],
            "dependency cycle: a -> b -> a",
        ),
        (
            lambda f: [_package(f, "a", "1.0", {"b": ">=2"}), _package(f, "b", "1.0")],
            "a 1.0 needs b>=2, but the bundle's b is 1.0",
        ),
    ],
)
def test_write_refuses_bad_sets(make: Any, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=message):
        write_bundle(tmp_path / "x.otabundle", make(tmp_path))
    assert not (tmp_path / "x.otabundle").exists()


def test_a_zip_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    item = _package(tmp_path, "a", "1.0")
    item.zip_path.unlink()
    os.mkfifo(item.zip_path)
    with pytest.raises(ValidationError, match="is not a regular file, so not a package zip"):
        write_bundle(tmp_path / "x.otabundle", [item])
    assert not (tmp_path / "x.otabundle").exists()


def test_a_missing_dependency_or_a_self_dependency_is_fine(tmp_path: Path) -> None:
    items = [_package(tmp_path, "a", "1.0", {"elsewhere": ">=1", "a": "1.0"})]
    write_bundle(tmp_path / "x.otabundle", items)
    with open_bundle(tmp_path / "x.otabundle") as bundle:
        assert [p.content.package for p in bundle.packages] == ["a"]


# -- hostile bundles --------------------------------------------------------------------------------


def _member(
    name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, target: str = ""
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def _manifest(contents: list[Content], sizes: list[int], **override: Any) -> bytes:
    body: dict[str, Any] = {
        "format": 1,
        "created": 1,
        "packages": [
            {"content": c.raw, "file": c.file_name, "size": size}
            for c, size in zip(contents, sizes, strict=True)
        ],
        **override,
    }
    return json.dumps(body).encode()


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    return path


@pytest.fixture
def pieces(tmp_path: Path) -> tuple[list[Content], list[bytes]]:
    """lib and app (app needs lib), in install order, with their zips' bytes."""
    items = [_package(tmp_path, "lib", "1.0"), _package(tmp_path, "app", "1.0", {"lib": ">=1"})]
    return [i.content for i in items], [i.zip_path.read_bytes() for i in items]


def _good_members(pieces: tuple[list[Content], list[bytes]]) -> list[tuple[tarfile.TarInfo, bytes]]:
    contents, zips = pieces
    return [
        _member(MANIFEST_NAME, _manifest(contents, [len(z) for z in zips])),
        *(_member(c.file_name, z) for c, z in zip(contents, zips, strict=True)),
    ]


def _refused(path: Path, message: str) -> str:
    with pytest.raises(ValidationError, match=message) as caught:
        open_bundle(path).close()
    text = str(caught.value)
    assert "\n" not in text
    assert text.count(". ") == 0, text  # one sentence
    return text


def test_the_hand_made_good_bundle_opens(pieces: tuple[list[Content], list[bytes]], tmp_path: Path) -> None:
    with open_bundle(_tar(tmp_path / "good.otabundle", _good_members(pieces))) as bundle:
        assert [p.content.package for p in bundle.packages] == ["lib", "app"]


def test_an_extra_member_is_refused(pieces: tuple[list[Content], list[bytes]], tmp_path: Path) -> None:
    path = _tar(tmp_path / "b.otabundle", [*_good_members(pieces), _member("README", b"hi")])
    _refused(path, "unexpected member 'README' after the last package")
    members = _good_members(pieces)
    path = _tar(tmp_path / "c.otabundle", [*members[:2], _member("extra.zip", b"x"), *members[2:]])
    _refused(path, "unexpected member 'extra.zip' where bundle.json lists 'app-major-1.0.zip'")


def test_a_symlink_member_is_refused(pieces: tuple[list[Content], list[bytes]], tmp_path: Path) -> None:
    members = _good_members(pieces)
    members[1] = _member("lib-major-1.0.zip", kind=tarfile.SYMTYPE, target="/etc/passwd")
    _refused(_tar(tmp_path / "b.otabundle", members), "member 'lib-major-1.0.zip' is a symbolic link")
    members[1] = _member("lib-major-1.0.zip", kind=tarfile.DIRTYPE)
    _refused(_tar(tmp_path / "c.otabundle", members), "member 'lib-major-1.0.zip' is a folder")
    members[1] = _member("lib-major-1.0.zip", kind=tarfile.LNKTYPE, target=MANIFEST_NAME)
    _refused(_tar(tmp_path / "d.otabundle", members), "member 'lib-major-1.0.zip' is a hard link")


def test_a_climbing_member_name_is_refused(pieces: tuple[list[Content], list[bytes]], tmp_path: Path) -> None:
    members = _good_members(pieces)
    members[1] = _member("../x.zip", members[1][1])
    _refused(_tar(tmp_path / "b.otabundle", members), r"unexpected member '\.\./x\.zip'")


def test_a_size_lie_is_refused(pieces: tuple[list[Content], list[bytes]], tmp_path: Path) -> None:
    contents, zips = pieces
    members = _good_members(pieces)
    members[0] = _member(MANIFEST_NAME, _manifest(contents, [len(zips[0]) + 1, len(zips[1])]))
    _refused(
        _tar(tmp_path / "b.otabundle", members),
        f"member 'lib-major-1.0.zip' holds {len(zips[0])} bytes, but bundle.json says {len(zips[0]) + 1}",
    )


def test_a_truncated_bundle_is_refused(pieces: tuple[list[Content], list[bytes]], tmp_path: Path) -> None:
    whole = _tar(tmp_path / "whole.otabundle", _good_members(pieces)).read_bytes()
    with tarfile.open(tmp_path / "whole.otabundle") as tar:
        last = tar.getmembers()[-1]
        first = tar.getmembers()[0]
    cuts = {
        "in bundle.json": first.offset_data + 10,
        "in the last zip": last.offset_data + last.size // 2,
        "before the last zip": last.offset,
        "in the last header": last.offset + 100,
        "at the start of bundle.json": first.offset_data,
    }
    for where, cut in cuts.items():
        path = tmp_path / f"cut-{cut}.otabundle"
        path.write_bytes(whole[:cut])
        with pytest.raises(ValidationError) as caught:
            open_bundle(path).close()
        assert str(path) in str(caught.value), where
        assert "\n" not in str(caught.value)


def test_bundle_json_must_come_first(pieces: tuple[list[Content], list[bytes]], tmp_path: Path) -> None:
    members = _good_members(pieces)
    members[0], members[1] = members[1], members[0]
    _refused(
        _tar(tmp_path / "b.otabundle", members), "its first member is 'lib-major-1.0.zip', not bundle.json"
    )
    _refused(_tar(tmp_path / "empty.otabundle", []), "it is empty, not bundle.json")


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (b"{not json", "bundle.json in .* is not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"format": 2, "created": 1, "packages": []}', "is of format 2; this otakit reads format 1"),
        (b'{"format": true, "created": 1, "packages": []}', "is of format True"),
        (b'{"format": 1, "created": "now", "packages": []}', "created must be a whole number"),
        (b'{"format": 1, "created": 1, "packages": []}', "packages must be a non-empty list"),
        (
            b'{"format": 1, "created": 1, "packages": [5]}',
            "package #1 of bundle.json .* must be a JSON object",
        ),
        (
            b'{"format": 1, "created": 1, "packages": [{"content": {"package": "x"}, "file": "x"}]}',
            "invalid content.json of package #1 .*: version is required",
        ),
    ],
)
def test_a_broken_bundle_json_is_refused(manifest: bytes, message: str, tmp_path: Path) -> None:
    _refused(_tar(tmp_path / "b.otabundle", [_member(MANIFEST_NAME, manifest)]), message)


def test_a_bundle_json_over_16_mib_is_refused_unread(tmp_path: Path) -> None:
    path = _tar(tmp_path / "big.otabundle", [_member(MANIFEST_NAME, b" " * (16 * 1024 * 1024 + 1))])
    _refused(path, "bundle.json is 16777217 bytes, over 16777216")


def test_bundle_json_must_describe_its_members(
    pieces: tuple[list[Content], list[bytes]], tmp_path: Path
) -> None:
    contents, zips = pieces
    sizes = [len(z) for z in zips]
    cases = {
        "twice": (_manifest([contents[0], contents[0]], sizes[:1] * 2), "lists package lib twice"),
        "order": (
            _manifest(contents[::-1], sizes[::-1]),
            "lists app before lib, which it requires",
        ),
        "file": (
            json.dumps(
                {
                    "format": 1,
                    "created": 1,
                    "packages": [{"content": contents[0].raw, "file": "../lib.zip", "size": 1}],
                }
            ).encode(),
            "file must be 'lib-major-1.0.zip', not '../lib.zip'",
        ),
        "size": (
            json.dumps(
                {
                    "format": 1,
                    "created": 1,
                    "packages": [{"content": contents[0].raw, "file": contents[0].file_name, "size": -1}],
                }
            ).encode(),
            "size must be a whole number of bytes",
        ),
    }
    for name, (manifest, message) in cases.items():
        members = [_member(MANIFEST_NAME, manifest), *_good_members(pieces)[1:]]
        _refused(_tar(tmp_path / f"{name}.otabundle", members), message)


def test_what_is_not_a_tar_is_refused(chain: list[BundleItem], tmp_path: Path) -> None:
    for name, data in {
        "empty": b"",
        "zip": chain[0].zip_path.read_bytes(),
        "noise": os.urandom(4096),
    }.items():
        path = tmp_path / f"{name}.otabundle"
        path.write_bytes(data)
        _refused(path, "is not an otakit bundle: not a tar file")
    write_bundle(tmp_path / "real.otabundle", chain)
    (tmp_path / "gz.otabundle").write_bytes(gzip.compress((tmp_path / "real.otabundle").read_bytes()))
    _refused(tmp_path / "gz.otabundle", "not a tar file")


def test_what_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.otabundle")
    _refused(tmp_path / "fifo.otabundle", "is not a regular file")  # and the open did not hang
    _refused(tmp_path, "is not a regular file")
    with pytest.raises(FileNotFoundError):
        open_bundle(tmp_path / "nothing.otabundle")


def test_a_huge_extended_header_is_refused_before_it_is_read(tmp_path: Path) -> None:
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = 1024 * 1024 * 1024
    path = tmp_path / "huge.otabundle"
    path.write_bytes(info.tobuf(tarfile.USTAR_FORMAT) + b"\0" * 4096)
    _refused(path, "a member header claims 1073741824 bytes of extension")


# -- extracting -------------------------------------------------------------------------------------


def test_extract_refuses_bytes_changed_in_the_bundle(chain: list[BundleItem], tmp_path: Path) -> None:
    out = tmp_path / "app.otabundle"
    write_bundle(out, chain)
    with tarfile.open(out) as tar:
        member = tar.getmember("mid-major-1.0.1.zip")
    with open(out, "r+b") as file:
        file.seek(member.offset_data + member.size // 2)
        byte = file.read(1)
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte[0] ^ 0x01]))
    dest = tmp_path / "mid.zip"
    with open_bundle(out) as bundle:  # the headers are intact: it opens
        mid = bundle.find("mid")
        assert mid is not None
        with pytest.raises(
            VerificationError, match=r"mid-major-1\.0\.1\.zip in .* does not match its content\.json"
        ):
            bundle.extract(mid, dest)
        assert not dest.exists()
        lib = bundle.find("lib")
        assert lib is not None
        bundle.extract(lib, tmp_path / "lib.zip")  # the others are intact
        assert (tmp_path / "lib.zip").read_bytes() == chain[1].zip_path.read_bytes()


def test_extract_never_overwrites(chain: list[BundleItem], tmp_path: Path) -> None:
    out = tmp_path / "app.otabundle"
    write_bundle(out, chain)
    dest = tmp_path / "there.zip"
    dest.write_bytes(b"mine")
    with open_bundle(out) as bundle, pytest.raises(FileExistsError):
        bundle.extract(bundle.packages[0], dest)
    assert dest.read_bytes() == b"mine"


def test_extract_refuses_another_bundles_item(chain: list[BundleItem], tmp_path: Path) -> None:
    write_bundle(tmp_path / "one.otabundle", chain[1:2])
    write_bundle(tmp_path / "all.otabundle", chain)
    with (
        open_bundle(tmp_path / "one.otabundle") as one,
        open_bundle(tmp_path / "all.otabundle") as every,
        pytest.raises(ValidationError, match=r"app-major-2\.0\.zip is not a package of"),
    ):
        one.extract(every.packages[2], tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()


def test_extract_notices_a_bundle_that_shrank(chain: list[BundleItem], tmp_path: Path) -> None:
    out = tmp_path / "app.otabundle"
    write_bundle(out, chain)
    bundle: Bundle = open_bundle(out)
    try:
        last = bundle.packages[-1]
        with tarfile.open(out) as tar:
            os.truncate(out, tar.getmember(last.file).offset_data + last.size // 2)
        with pytest.raises(ValidationError, match=r"is truncated: app-major-2\.0\.zip ends early"):
            bundle.extract(last, tmp_path / "app.zip")
        assert not (tmp_path / "app.zip").exists()
    finally:
        bundle.close()

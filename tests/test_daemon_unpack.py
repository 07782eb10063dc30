from __future__ import annotations

import contextlib
import io
import os
import stat
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otakit.daemon.unpack import inspect, unpack
from otakit.errors import ValidationError, VerificationError
from otakit.pack import pack
from tests.samples import LEGACY, zip_with_modes

_LINK = stat.S_IFLNK | 0o777


def test_unpacks_a_packed_folder_with_modes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "run").write_text("#!/bin/sh\n")
    os.chmod(src / "bin" / "run", 0o755)
    (src / "empty").mkdir()
    (src / "data.txt").write_text("data")
    result = pack(src, tmp_path / "out", package="p", branch="b", version="1.0")
    dest = tmp_path / "dest"
    assert unpack(result.zip_path, dest) == 2
    assert (dest / "data.txt").read_text() == "data"
    assert stat.S_IMODE((dest / "bin" / "run").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "data.txt").stat().st_mode) == 0o644
    assert (dest / "empty").is_dir()


def test_legacy_packages_unpack(tmp_path: Path) -> None:
    assert unpack(LEGACY / "test.zip", tmp_path / "a") == 1
    assert (tmp_path / "a" / "test.py").exists()
    assert unpack(LEGACY / "test-test-0.0.2.zip", tmp_path / "b") == 1
    assert (tmp_path / "b" / "1.txt").exists()


@pytest.mark.parametrize(
    "entries",
    [
        [("ok.txt", b"fine", 0o100644), ("../evil.txt", b"x", 0o100644)],
        [("ok.txt", b"fine", 0o100644), ("/tmp/otakit-abs-evil.txt", b"x", 0o100644)],
        [("ok.txt", b"fine", 0o100644), ("a/../../evil.txt", b"x", 0o100644)],
        [("link", b"../../", stat.S_IFLNK | 0o777), ("link/evil.txt", b"x", 0o100644)],
        [("link", b"/etc", stat.S_IFLNK | 0o777)],
        # chains: each link alone stays inside, but later entries pass through the earlier links
        [("a", b".", _LINK), ("a/b", b"..", _LINK), ("a/b/evil.txt", b"x", 0o100644)],
        [("a", b".", _LINK), ("b", b"a/..", _LINK)],
        [("d/up", b"..", _LINK), ("x", b"d/up/..", _LINK)],
        [("a", b".", _LINK), ("a/a/a/b", b"../..", _LINK)],
        [("x", b"sub", _LINK), ("x/evil.txt", b"x", 0o100644), ("sub/", b"", 0o40755)],
    ],
)
def test_zip_slip_is_refused_before_anything_is_written(
    tmp_path: Path, entries: list[tuple[str, bytes, int]]
) -> None:
    dest = tmp_path / "deep" / "dest"
    dest.parent.mkdir()
    with pytest.raises(ValidationError, match="unsafe"):
        unpack(zip_with_modes(tmp_path / "evil.zip", entries), dest)
    assert not dest.exists()
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "deep" / "evil.txt").exists()
    assert not Path("/tmp/otakit-abs-evil.txt").exists()


def test_links_inside_the_tree_are_kept(tmp_path: Path) -> None:
    archive = zip_with_modes(
        tmp_path / "l.zip", [("a/file", b"x", 0o100644), ("a/link", b"file", stat.S_IFLNK | 0o777)]
    )
    unpack(archive, tmp_path / "dest")
    assert os.readlink(tmp_path / "dest" / "a" / "link") == "file"
    assert (tmp_path / "dest" / "a" / "link").read_bytes() == b"x"


def test_damaged_zip_is_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.zip").write_bytes(b"not a zip at all")
    with pytest.raises(VerificationError, match="not a valid zip"):
        unpack(tmp_path / "junk.zip", tmp_path / "dest")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("file.txt", b"A" * 1000)
    damaged = bytearray(buffer.getvalue())
    damaged[damaged.index(b"A" * 10) + 5] ^= 0xFF  # a flipped bit: the CRC no longer matches
    (tmp_path / "crc.zip").write_bytes(bytes(damaged))
    with pytest.raises(VerificationError, match="damaged"):
        unpack(tmp_path / "crc.zip", tmp_path / "dest2")


def _outside(box: Path, stage: Path) -> dict[str, bytes | str]:
    """Everything under ``box`` but ``stage``: what an unpack must never touch."""
    found: dict[str, bytes | str] = {}
    for path in sorted(box.rglob("*")):
        if path == stage or stage in path.parents:
            continue
        name = path.relative_to(box).as_posix()
        found[name] = (
            f"-> {os.readlink(path)}"
            if path.is_symlink()
            else (path.read_bytes() if path.is_file() else "dir")
        )
    return found


_NAMES = st.sampled_from(["a", "b", "c", "d", "x"])
_PATHS = st.lists(st.sampled_from(["a", "b", "c", ".", ".."]), min_size=1, max_size=4).map("/".join)
_ENTRY = st.one_of(
    st.tuples(st.lists(_NAMES, min_size=1, max_size=3).map("/".join), st.just("file"), st.just("")),
    st.tuples(st.lists(_NAMES, min_size=1, max_size=3).map("/".join), st.just("dir"), st.just("")),
    st.tuples(st.lists(_NAMES, min_size=1, max_size=3).map("/".join), st.just("link"), _PATHS),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(_ENTRY, min_size=1, max_size=8))
def test_no_zip_writes_or_points_outside_its_folder(
    tmp_path_factory: pytest.TempPathFactory, entries: list[tuple[str, str, str]]
) -> None:
    box = tmp_path_factory.mktemp("box")
    (box / "beside.txt").write_bytes(b"beside\n")
    (box / "inner").mkdir()
    stage = box / "inner" / "stage"
    rows = []
    for name, kind, target in entries:
        if kind == "file":
            rows.append((name, b"evil\n", 0o100644))
        elif kind == "dir":
            rows.append((name + "/", b"", 0o40755))
        else:
            rows.append((name, target.encode(), _LINK))
    archive = zip_with_modes(box / "p.zip", rows)
    before = _outside(box, stage)
    with contextlib.suppress(ValidationError):
        unpack(archive, stage)
    assert _outside(box, stage) == before
    if stage.exists():
        root = os.path.realpath(stage)
        for path in stage.rglob("*"):
            resolved = os.path.realpath(path)
            assert resolved == root or resolved.startswith(root + os.sep), (path, entries)


def test_the_checks_read_no_file_data(tmp_path: Path) -> None:
    archive = zip_with_modes(
        tmp_path / "big.zip", [("a.bin", b"\0" * (4 << 20), 0o100644), ("l", b"a.bin", _LINK)]
    )
    listing = inspect(archive)
    assert (listing.files, listing.size) == (1, 4 << 20)
    assert [(entry.name, entry.kind) for entry in listing.entries] == [("a.bin", "file"), ("l", "symlink")]


def test_encrypted_or_unknown_compression_is_refused_before_unpacking(tmp_path: Path) -> None:
    data = bytearray(
        (tmp_path / "x").write_bytes(b"")
        or zip_with_modes(tmp_path / "ok.zip", [("f", b"x", 0o100644)]).read_bytes()
    )
    # the general-purpose flag's bit 0 (encrypted), in the central directory entry
    central = data.rindex(b"PK\x01\x02")
    data[central + 8] |= 0x1
    (tmp_path / "enc.zip").write_bytes(bytes(data))
    with pytest.raises(VerificationError, match="encrypted"):
        inspect(tmp_path / "enc.zip")

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import pytest

from otakit.daemon.unpack import unpack
from otakit.errors import ValidationError, VerificationError
from otakit.pack import pack
from tests.samples import LEGACY


def _zip(path: Path, entries: list[tuple[str, bytes, int]]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = mode << 16
            archive.writestr(info, data)
    return path


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
    ],
)
def test_zip_slip_is_refused_before_anything_is_written(
    tmp_path: Path, entries: list[tuple[str, bytes, int]]
) -> None:
    dest = tmp_path / "deep" / "dest"
    dest.parent.mkdir()
    with pytest.raises(ValidationError, match="unsafe"):
        unpack(_zip(tmp_path / "evil.zip", entries), dest)
    assert not dest.exists()
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "deep" / "evil.txt").exists()
    assert not Path("/tmp/otakit-abs-evil.txt").exists()


def test_links_inside_the_tree_are_kept(tmp_path: Path) -> None:
    archive = _zip(
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

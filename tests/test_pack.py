from __future__ import annotations

import hashlib
import json
import os
import stat
import zipfile
from pathlib import Path

import pytest

from otakit.errors import ValidationError
from otakit.pack import collect, pack, parse_depends

SEED_KEYS = [
    "package", "description", "updateInfo", "version", "branch", "local", "remote", "sha256",
    "tree_sha256", "BeforeUpdate", "AfterUpdate", "dependencies",
]  # fmt: skip


def _tree(root: Path, files: dict[str, bytes], order: list[str] | None = None) -> Path:
    for name in order or list(files):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files[name])
    return root


FILES = {"bin/run.sh": b"#!/bin/sh\necho hi\n", "app/main.py": b"print('hi')\n", "README": b"readme\n" * 100}


def test_pack_writes_zip_and_content_json(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", FILES)
    os.chmod(src / "bin/run.sh", 0o700)
    result = pack(src, tmp_path / "out", package="app", branch="major", version="1.2.3",
                  depends={"base": ">=1.0,<2"}, before="systemctl stop app", after="systemctl start app",
                  remote="http://ota.example/", description="d", update_info="notes")  # fmt: skip
    assert result.zip_path == tmp_path / "out" / "app-major-1.2.3.zip"
    content = json.loads(result.content_path.read_text())
    assert list(content) == SEED_KEYS  # every seed key, in the seed's order
    assert content["sha256"] == hashlib.sha256(result.zip_path.read_bytes()).hexdigest()
    assert content["local"] == "./app"
    assert content["dependencies"] == {"base": ">=1.0,<2"}
    assert content["BeforeUpdate"] == "systemctl stop app"
    with zipfile.ZipFile(result.zip_path) as archive:
        assert archive.testzip() is None
        infos = {info.filename: info for info in archive.infolist()}
        assert sorted(infos) == ["README", "app/", "app/main.py", "bin/", "bin/run.sh"]
        assert archive.read("app/main.py") == FILES["app/main.py"]
        assert stat.S_IMODE(infos["bin/run.sh"].external_attr >> 16) == 0o755  # the executable bit kept
        assert stat.S_IMODE(infos["README"].external_attr >> 16) == 0o644
        assert all(info.date_time == (1980, 1, 1, 0, 0, 0) for info in infos.values())
    assert result.files == 3


def test_same_files_give_the_same_bytes(tmp_path: Path) -> None:
    first = _tree(tmp_path / "a", FILES)
    second = _tree(tmp_path / "b", FILES, order=list(reversed(FILES)))  # created in another order
    os.utime(second / "README", (1, 1))
    os.utime(second / "app", (2_000_000_000, 2_000_000_000))
    os.chmod(second / "app/main.py", 0o600)  # group/other bits do not matter, only owner-exec
    one = pack(first, tmp_path / "o1", package="p", branch="b", version="1.0")
    two = pack(second, tmp_path / "o2", package="p", branch="b", version="1.0")
    assert one.zip_path.read_bytes() == two.zip_path.read_bytes()
    assert one.content.sha256 == two.content.sha256
    (second / "README").write_bytes(b"changed")
    three = pack(second, tmp_path / "o3", package="p", branch="b", version="1.0")
    assert three.content.sha256 != one.content.sha256


def test_pack_into_its_own_folder_leaves_outputs_out(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", FILES)
    first = pack(src, src, package="p", branch="b", version="1.0")
    again = pack(src, src, package="p", branch="b", version="1.0")
    assert first.content.sha256 == again.content.sha256
    with zipfile.ZipFile(again.zip_path) as archive:
        assert "content.json" not in archive.namelist()
        assert "p-b-1.0.zip" not in archive.namelist()


def test_ignore_file_and_excludes(tmp_path: Path) -> None:
    src = _tree(
        tmp_path / "src", {**FILES, "logs/x.log": b"x", "a.pyc": b"c", "keep.log": b"k", "tmp/t": b"t"}
    )
    (src / ".otakitignore").write_text("*.log\n!keep.log\n*.pyc\n")
    names = [entry.name for entry in collect(src, excludes=["tmp/"])]
    assert names == ["README", "app/", "app/main.py", "bin/", "bin/run.sh", "keep.log", "logs/"]


def test_symlink_inside_is_stored_as_its_target(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", FILES)
    os.symlink("app/main.py", src / "link.py")
    result = pack(src, tmp_path / "out", package="p", branch="b", version="1.0")
    with zipfile.ZipFile(result.zip_path) as archive:
        assert archive.read("link.py") == FILES["app/main.py"]
        assert stat.S_ISREG(archive.getinfo("link.py").external_attr >> 16)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("/etc/passwd", "outside the folder"),
        ("../outside", "outside the folder"),
        ("missing", "does not exist"),
        ("app", "links to a folder"),
    ],
)
def test_bad_symlinks_are_refused(tmp_path: Path, target: str, message: str) -> None:
    src = _tree(tmp_path / "src", FILES)
    (tmp_path / "outside").write_text("secret")
    os.symlink(target, src / "link")
    with pytest.raises(ValidationError, match=message):
        pack(src, tmp_path / "out", package="p", branch="b", version="1.0")
    assert not (tmp_path / "out" / "p-b-1.0.zip").exists()


def test_special_files_are_refused(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", FILES)
    os.mkfifo(src / "fifo")
    with pytest.raises(ValidationError, match="not a regular file"):
        collect(src)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"package": "../x"}, "invalid package"),
        ({"branch": "a/b"}, "invalid branch"),
        ({"version": "one"}, "invalid version"),
        ({"depends": {"x": "=>1"}}, "requirement"),
    ],
)
def test_bad_descriptions_are_refused_before_writing(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    src = _tree(tmp_path / "src", FILES)
    args: dict[str, object] = {"package": "p", "branch": "b", "version": "1.0", **kwargs}
    with pytest.raises(ValidationError, match=message) as refused:
        pack(src, tmp_path / "out", **args)  # type: ignore[arg-type]
    assert str(refused.value).startswith("invalid package description: ")
    assert not (tmp_path / "out").exists()


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not a folder"):
        pack(tmp_path / "nope", tmp_path / "out", package="p", branch="b", version="1.0")


def test_parse_depends() -> None:
    assert parse_depends(["a=1.0", "b>=1,<2", "c", "d==2", "e=>=3,<4"]) == {
        "a": "1.0", "b": ">=1,<2", "c": "", "d": "==2", "e": ">=3,<4",
    }  # fmt: skip
    for bad in ["=1.0", "a=>>1", "../x=1", "a=not a version"]:
        with pytest.raises(ValidationError):
            parse_depends([bad])
    with pytest.raises(ValidationError, match="twice"):
        parse_depends(["a=1", "a=2"])

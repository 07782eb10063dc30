from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otakit.daemon.unpack import unpack
from otakit.delta import DELTA_MAGIC, DeltaError, DeltaStats, apply_delta, make_delta, read_index
from otakit.errors import ValidationError
from otakit.manifest import ManifestEntry, manifest_of_folder, tree_sha256
from otakit.pack import pack
from tests.samples import write_files

Files = dict[str, bytes | None]  # a file's bytes, or None for an empty folder


class Versions:
    """Two packed versions A and B, A installed, and the delta between them."""

    def __init__(self, root: Path, a: Files, b: Files, a_exec: frozenset[str] = frozenset(),
                 b_exec: frozenset[str] = frozenset()) -> None:  # fmt: skip
        self.root = root
        self.a = pack(
            write_files(root / "a", a, a_exec), root / "a-out", package="p", branch="b", version="1.0"
        )
        self.b = pack(
            write_files(root / "b", b, b_exec), root / "b-out", package="p", branch="b", version="2.0"
        )
        self.installed = root / "installed"
        unpack(self.a.zip_path, self.installed)
        self.expected = root / "expected"
        unpack(self.b.zip_path, self.expected)
        self.delta = root / "a-to-b.delta"
        with open(self.delta, "wb") as out:
            self.stats = make_delta(self.a.zip_path, self.b.zip_path, out)
        self.staging = root / "staging"
        self.staging.mkdir()

    @property
    def b_tree(self) -> str:
        tree: str = self.b.content.raw["tree_sha256"]
        return tree

    def apply(self) -> None:
        apply_delta(self.delta, self.installed, self.staging, self.b_tree)
        assert _state(self.staging) == _state(self.expected)

    def index(self) -> dict[str, Any]:
        return read_index(self.delta)

    def kinds(self) -> dict[str, str]:
        return {e["path"]: e["kind"] for e in self.index()["entries"]}


def _state(root: Path) -> dict[str, tuple[str, int, bytes]]:
    """Every path under ``root``: kind, permission bits, bytes."""
    out: dict[str, tuple[str, int, bytes]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        kind = "d" if stat.S_ISDIR(info.st_mode) else "f" if stat.S_ISREG(info.st_mode) else "other"
        out[path.relative_to(root).as_posix()] = (kind, stat.S_IMODE(info.st_mode),
                                                  path.read_bytes() if kind == "f" else b"")  # fmt: skip
    return out


def _outside(root: Path, staging: Path) -> dict[str, tuple[str, int, bytes]]:
    """Everything under ``root`` but the staging folder: what an apply must leave as it was."""
    return {k: v for k, v in _state(root).items() if not (k + "/").startswith(staging.name + "/")}


FILES: Files = {
    "README": b"read me\n" * 50,
    "bin/run.sh": b"#!/bin/sh\necho one\n",
    "lib/core.py": b"".join(b"def f%d(x):\n    return x * %d\n" % (i, i) for i in range(400)),
    "lib/data.bin": random.Random(1).randbytes(50_000),
    "empty/": None,
}


def test_identical_trees_are_all_copies(tmp_path: Path) -> None:
    v = Versions(tmp_path, FILES, FILES, frozenset({"bin/run.sh"}), frozenset({"bin/run.sh"}))
    assert (v.stats.copied, v.stats.patched, v.stats.new, v.stats.dirs) == (4, 0, 0, 3)
    assert v.stats.size < 2000
    assert v.stats.size == v.delta.stat().st_size
    assert v.stats.new_zip_size == v.b.zip_path.stat().st_size
    assert v.stats.worthwhile()
    assert (v.stats.from_tree_sha256, v.stats.to_tree_sha256) == (
        v.a.content.raw["tree_sha256"], v.b_tree)  # fmt: skip
    v.apply()
    assert stat.S_IMODE((v.staging / "bin/run.sh").stat().st_mode) == 0o755
    assert tree_sha256(manifest_of_folder(v.staging)) == v.b_tree


def test_one_byte_changed_in_a_big_file(tmp_path: Path) -> None:
    big = random.Random(2).randbytes(20 * 1024 * 1024)
    changed = bytearray(big)
    changed[12_345_678] ^= 0xFF
    started = time.perf_counter()
    v = Versions(tmp_path, {"big.bin": big, "small": b"s"}, {"big.bin": bytes(changed), "small": b"s"})
    made = time.perf_counter() - started
    assert v.kinds() == {"big.bin": "patch", "small": "copy"}
    assert v.stats.size < v.stats.new_zip_size / 100
    started = time.perf_counter()
    v.apply()
    applied = time.perf_counter() - started
    print(f"\n20 MiB, one byte changed: delta {v.stats.size} B for a {v.stats.new_zip_size} B zip; "
          f"packing both and making the delta {made:.2f} s, applying {applied:.2f} s")  # fmt: skip


def test_added_removed_renamed_and_moved_files(tmp_path: Path) -> None:
    a: Files = dict(FILES) | {"old-name.txt": b"renamed content " * 20, "gone.txt": b"bye"}
    b: Files = {k: v for k, v in FILES.items() if k != "lib/data.bin"}
    b |= {"new-name.txt": b"renamed content " * 20, "moved/data.bin": FILES["lib/data.bin"],
          "added.txt": b"hello, new file"}  # fmt: skip
    v = Versions(tmp_path, a, b)
    kinds = v.kinds()
    assert kinds["new-name.txt"] == kinds["moved/data.bin"] == "copy"
    assert kinds["added.txt"] == "new"
    assert "gone.txt" not in kinds
    bases = {e["path"]: e.get("base") for e in v.index()["entries"]}
    assert bases["new-name.txt"] == "old-name.txt"
    assert bases["moved/data.bin"] == "lib/data.bin"
    v.apply()


def test_executable_bit_flipped(tmp_path: Path) -> None:
    v = Versions(tmp_path, FILES, FILES, a_exec=frozenset({"bin/run.sh"}), b_exec=frozenset({"README"}))
    entries = {e["path"]: e for e in v.index()["entries"]}
    assert entries["README"]["kind"] == "copy"
    assert entries["README"]["mode"] == 0o755
    assert entries["bin/run.sh"]["mode"] == 0o644
    v.apply()
    assert stat.S_IMODE((v.staging / "README").stat().st_mode) == 0o755


def test_empty_folders_come_and_go(tmp_path: Path) -> None:
    b = {k: v for k, v in FILES.items() if k != "empty/"} | {"fresh/and/deep/": None}
    v = Versions(tmp_path, FILES, b)
    assert v.kinds()["fresh/and/deep"] == "dir"
    v.apply()
    assert (v.staging / "fresh/and/deep").is_dir()
    assert not (v.staging / "empty").exists()


def test_a_file_replaced_by_random_bytes(tmp_path: Path) -> None:
    b = dict(FILES) | {"lib/core.py": random.Random(3).randbytes(30_000)}
    v = Versions(tmp_path, FILES, b)
    assert v.kinds()["lib/core.py"] in ("new", "patch")
    v.apply()


def test_an_edited_text_file_is_a_patch(tmp_path: Path) -> None:
    source = FILES["lib/core.py"]
    assert isinstance(source, bytes)
    b = dict(FILES) | {"lib/core.py": source.replace(b"return x * 17\n", b"return x * 17 + 1\n")}
    v = Versions(tmp_path, FILES, b)
    entry = next(e for e in v.index()["entries"] if e["path"] == "lib/core.py")
    assert entry["kind"] == "patch"
    assert entry["base"] == "lib/core.py"
    assert entry["base_sha256"] == hashlib.sha256(source).hexdigest()
    assert entry["length"] < 100
    v.apply()


def test_the_delta_format(tmp_path: Path) -> None:
    v = Versions(tmp_path, FILES, dict(FILES) | {"added": b"x" * 1000})
    data = v.delta.read_bytes()
    assert data.startswith(DELTA_MAGIC)
    length = int.from_bytes(data[len(DELTA_MAGIC) : len(DELTA_MAGIC) + 8], "big")
    index = json.loads(data[len(DELTA_MAGIC) + 8 : len(DELTA_MAGIC) + 8 + length])
    assert index == v.index()
    assert index["format"] == 1
    assert index["to"] == {"tree_sha256": v.b_tree}
    assert index["from"] == {"tree_sha256": v.a.content.raw["tree_sha256"]}
    added = next(e for e in index["entries"] if e["path"] == "added")
    assert set(added) == {"kind", "path", "mode", "size", "sha256", "offset", "length"}
    assert added["kind"] == "new"
    blobs = data[len(DELTA_MAGIC) + 8 + length :]
    assert added["offset"] + added["length"] <= len(blobs)
    assert [e["path"] for e in index["entries"]] == [e.path for e in manifest_of_folder(v.expected)]


def test_make_delta_into_a_stream_and_checks_expected_trees(tmp_path: Path) -> None:
    v = Versions(tmp_path, FILES, dict(FILES) | {"added": b"x"})
    buffer = io.BytesIO()
    stats = make_delta(v.a.zip_path, v.b.zip_path, buffer, from_tree_sha256=v.a.content.raw["tree_sha256"],
                       to_tree_sha256=v.b_tree)  # fmt: skip
    assert buffer.getvalue() == v.delta.read_bytes()
    assert stats == v.stats
    with pytest.raises(ValidationError, match="tree"):
        make_delta(v.a.zip_path, v.b.zip_path, io.BytesIO(), to_tree_sha256="0" * 64)


def test_worthwhile() -> None:
    assert DeltaStats(0, 1, 0, 0, 400, 1000, "a", "b").worthwhile()
    assert not DeltaStats(0, 1, 0, 0, 600, 1000, "a", "b").worthwhile()


# ------------------------------------------------------------------------------------------------ damage


def _damaged(v: Versions, data: bytes, match: str) -> None:
    """Applying ``data`` as the delta must fail saying ``match``, and change nothing outside the
    staging folder."""
    v.delta.write_bytes(data)
    before = _outside(v.root, v.staging)
    with pytest.raises(DeltaError, match=match):
        apply_delta(v.delta, v.installed, v.staging, v.b_tree)
    assert _outside(v.root, v.staging) == before


@pytest.fixture
def versions(tmp_path: Path) -> Versions:
    source = FILES["lib/core.py"]
    assert isinstance(source, bytes)
    b = dict(FILES) | {"lib/core.py": source + b"# more\n", "added": random.Random(4).randbytes(5000)}
    return Versions(tmp_path, FILES, b)


def _blobs_start(data: bytes) -> int:
    return len(DELTA_MAGIC) + 8 + int.from_bytes(data[len(DELTA_MAGIC) : len(DELTA_MAGIC) + 8], "big")


@pytest.mark.parametrize("where", [0.0, 0.5, 0.99])
def test_a_flipped_byte_in_the_blobs(versions: Versions, where: float) -> None:
    data = versions.delta.read_bytes()
    blobs = [e for e in versions.index()["entries"] if "offset" in e]
    assert {e["kind"] for e in blobs} == {"patch", "new"}
    for entry in blobs:
        damaged = bytearray(data)
        damaged[_blobs_start(data) + entry["offset"] + int(entry["length"] * where)] ^= 0x40
        shutil.rmtree(versions.staging)
        versions.staging.mkdir()
        _damaged(versions, bytes(damaged), "does not decompress|another size or sha256")


@pytest.mark.parametrize("keep", [0, 5, len(DELTA_MAGIC) + 4, len(DELTA_MAGIC) + 20, -1, -100])
def test_a_truncated_delta(versions: Versions, keep: int) -> None:
    data = versions.delta.read_bytes()
    _damaged(versions, data[:keep], "not an otakit delta|more than the file holds|past the end")


def test_a_damaged_header_or_index(versions: Versions) -> None:
    data = versions.delta.read_bytes()
    header = len(DELTA_MAGIC) + 8
    length = _blobs_start(data) - header
    _damaged(versions, b"X" + data[1:], "not an otakit delta")
    _damaged(
        versions, data[: len(DELTA_MAGIC)] + (length + 10**9).to_bytes(8, "big") + data[header:], "claims"
    )
    _damaged(versions, data[:header] + b"[" + data[header + 1 :], "not valid JSON")
    deep = b"[" * 100_000 + b"]" * 100_000
    _damaged(versions, DELTA_MAGIC + len(deep).to_bytes(8, "big") + deep, "not valid JSON")


def test_a_changed_installed_file(versions: Versions) -> None:
    (versions.installed / "lib/core.py").write_bytes(b"locally edited")  # a patch's base
    _damaged(versions, versions.delta.read_bytes(), "lib/core.py changed: its sha256")


def test_a_changed_copy_base(versions: Versions) -> None:
    (versions.installed / "README").write_bytes(b"read me\n" * 49 + b"READ ME\n")  # same size
    _damaged(versions, versions.delta.read_bytes(), "installed file README changed")
    shutil.rmtree(versions.staging)
    versions.staging.mkdir()
    (versions.installed / "README").write_bytes(b"read me\n" * 51)  # longer
    _damaged(versions, versions.delta.read_bytes(), "longer .* installed file README changed")


def test_a_missing_installed_file(versions: Versions) -> None:
    (versions.installed / "README").unlink()
    _damaged(versions, versions.delta.read_bytes(), "README cannot be opened")


def test_a_base_replaced_by_a_symlink(versions: Versions) -> None:
    outside = versions.root / "elsewhere"
    outside.write_bytes((versions.installed / "README").read_bytes())  # even with the right bytes
    (versions.installed / "README").unlink()
    (versions.installed / "README").symlink_to(outside)
    _damaged(versions, versions.delta.read_bytes(), "README cannot be opened")


def test_a_base_folder_replaced_by_a_symlink(versions: Versions) -> None:
    real = versions.root / "real-lib"
    (versions.installed / "lib").rename(real)
    (versions.installed / "lib").symlink_to(real)
    _damaged(versions, versions.delta.read_bytes(), "lib/core.py cannot be opened")


def _handmade(v: Versions, entries: list[dict[str, Any]], blobs: bytes = b"") -> bytes:
    manifest = [
        ManifestEntry.folder(e["path"]) if e["kind"] == "dir" else
        ManifestEntry.file(e["path"], e["mode"], e["size"], e["sha256"])
        for e in entries
        if e["kind"] in ("dir", "copy")
    ]  # fmt: skip
    try:
        to = tree_sha256(manifest)
    except ValidationError:  # an unsafe path: the tree does not matter, the path is refused first
        to = v.b_tree
    index = {"format": 1, "from": {"tree_sha256": "0" * 64}, "to": {"tree_sha256": to}, "entries": entries}
    text = json.dumps(index).encode()
    return DELTA_MAGIC + len(text).to_bytes(8, "big") + text + blobs


README = b"read me\n" * 50  # FILES["README"]


def _copy_entry(path: str, data: bytes) -> dict[str, Any]:
    return {"kind": "copy", "path": path, "mode": 0o644, "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "base": "README"}  # fmt: skip


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ([_copy_entry("../escaped", README)], r"'\.\./escaped' is unsafe"),
        ([_copy_entry("/abs", README)], "'/abs' is unsafe"),
        ([_copy_entry("a/../../escaped", README)], "is unsafe"),
        ([_copy_entry("nofolder/x", README)], "before its folder"),  # its folder is not in the delta
        ([{**_copy_entry("x", README), "base": "../b/README"}], r"'\.\./b/README' has an empty"),
        ([{**_copy_entry("x", README), "mode": 0o4755}], "mode 0o4755"),
        ([{**_copy_entry("x", README), "size": -1}], "size that is not a count"),
        ([{**_copy_entry("x", README), "extra": 1}], "has keys"),
        ([{"kind": "dir", "path": "d"}, {"kind": "dir", "path": "d"}], "listed twice"),
        ([{"kind": "link", "path": "x"}], "no known kind"),
        ([{"kind": ["dir"], "path": "x"}], "no known kind"),
    ],
)
def test_handmade_indexes_that_must_be_refused(
    versions: Versions, entries: list[dict[str, Any]], match: str
) -> None:
    _damaged(versions, _handmade(versions, entries), match)
    assert not (versions.root / "escaped").exists()


def test_a_handmade_index_that_is_fine_applies(versions: Versions) -> None:
    entry = _copy_entry("x", README)
    data = _handmade(versions, [entry])
    tree = tree_sha256([ManifestEntry.file("x", 0o644, entry["size"], entry["sha256"])])
    versions.delta.write_bytes(data)
    assert apply_delta(versions.delta, versions.installed, versions.staging, tree).copied == 1


def test_the_expected_tree_and_the_staging_folder(versions: Versions) -> None:
    with pytest.raises(DeltaError, match="not the expected"):
        apply_delta(versions.delta, versions.installed, versions.staging, "0" * 64)
    (versions.staging / "leftover").write_bytes(b"")
    with pytest.raises(DeltaError, match="empty"):
        apply_delta(versions.delta, versions.installed, versions.staging, versions.b_tree)


def test_make_delta_refuses_a_tree_a_device_cannot_build(tmp_path: Path) -> None:
    import zipfile

    z = tmp_path / "nodirs.zip"
    with zipfile.ZipFile(z, "w") as archive:
        archive.writestr("sub/file", b"x")  # no folder entry before it
    a = pack(write_files(tmp_path / "a", {"f": b"1"}), tmp_path / "o", package="p", branch="b", version="1.0")
    with pytest.raises(ValidationError, match="before its folder"):
        make_delta(a.zip_path, z, io.BytesIO())


# ------------------------------------------------------------------------------------------------ property

_NAMES = st.sampled_from(["a", "b", "a-b", "a.txt", "é", "x y"])
_POOL = [b"", b"short", b"0123456789" * 30, b"0123456789" * 29 + b"012345678X", bytes(range(256)) * 3]
_CONTENT = st.one_of(st.sampled_from(_POOL), st.binary(max_size=300))
_SPEC = st.dictionaries(
    st.lists(_NAMES, min_size=1, max_size=3).map("/".join),
    st.one_of(st.none(), st.tuples(_CONTENT, st.booleans())),
    max_size=7,
)


def _materialize(spec: dict[str, tuple[bytes, bool] | None]) -> tuple[Files, frozenset[str]]:
    files: Files = {}
    executable: set[str] = set()
    taken: dict[str, str] = {}  # path -> "f" or "d"
    for name, value in sorted(spec.items()):
        parts = name.split("/")
        parents = ["/".join(parts[:i]) for i in range(1, len(parts))]
        if name in taken or any(taken.get(p) == "f" for p in parents):
            continue
        taken.update(dict.fromkeys(parents, "d"))
        if value is None:
            taken[name] = "d"
            files[name + "/"] = None
        else:
            taken[name] = "f"
            files[name] = value[0]
            if value[1]:
                executable.add(name)
    return files, frozenset(executable)


@settings(max_examples=40, deadline=None)
@given(a_spec=_SPEC, b_spec=_SPEC)
def test_apply_make_a_b_gives_b(
    a_spec: dict[str, tuple[bytes, bool] | None], b_spec: dict[str, tuple[bytes, bool] | None]
) -> None:
    a, a_exec = _materialize(a_spec)
    b, b_exec = _materialize(b_spec)
    with tempfile.TemporaryDirectory() as temp:
        v = Versions(Path(temp), a, b, a_exec, b_exec)
        v.apply()
        assert sum((v.stats.copied, v.stats.patched, v.stats.new)) == sum(
            1 for x in b.values() if x is not None
        )

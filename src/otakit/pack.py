"""Packing a folder into a reproducible zip and its content.json.

Reproducible means the same files give the same bytes, whatever their timestamps, owners or the order
the file system lists them: entries are sorted by path, every timestamp is 1980-01-01 00:00, files
are stored 0644 or 0755 as their owner-executable bit says, folders 0755, compression is deflate level 6.

content.json gets ``tree_sha256`` (see ``otakit.manifest``), computed from the files as they are
written to the zip, so each file is read once; a path holding a newline is refused, as a manifest
cannot list it.

Rules for what goes in:
- ``.otakitignore`` in the folder (gitignore syntax) and ``--exclude`` patterns leave paths out; the
  ``.otakitignore`` file itself and the pack's own outputs are never packed.
- A symlink to a file inside the folder is stored as a regular file with the target's bytes and mode.
  A symlink that leaves the folder, dangles or names a folder is refused, as are sockets, FIFOs and
  devices: a package must unpack to the same tree on every device.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pathspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from otakit.content import Content, parse_content
from otakit.errors import ValidationError
from otakit.fsutil import write_atomically
from otakit.manifest import ManifestEntry, tree_sha256
from otakit.names import check_name
from otakit.signing import sign_content
from otakit.versions import parse_specifier

__all__ = ["IGNORE_FILE", "PackEntry", "PackResult", "collect", "pack", "parse_depends", "write_zip"]

IGNORE_FILE = ".otakitignore"
_EPOCH = (1980, 1, 1, 0, 0, 0)
_LEVEL = 6
_CHUNK = 1024 * 1024
_SEED_ORDER = (
    "package", "description", "updateInfo", "version", "branch", "local", "remote", "sha256",
    "tree_sha256", "BeforeUpdate", "AfterUpdate", "dependencies",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class PackEntry:
    name: str  # the path in the zip, '/'-separated; folders end with '/'
    source: Path | None  # None for a folder
    executable: bool = False
    size: int = 0


@dataclass(frozen=True, slots=True)
class PackResult:
    zip_path: Path
    content_path: Path
    content: Content
    size: int
    files: int


def parse_depends(values: Iterable[str]) -> dict[str, str]:
    """``NAME=SPEC`` (or ``NAME>=1.2``, ``NAME==1.0``, plain ``NAME`` for any version) into a dict."""
    out: dict[str, str] = {}
    for value in values:
        end = 0
        while end < len(value) and (value[end].isalnum() or value[end] in "._-"):
            end += 1
        name, spec = value[:end], value[end:]
        if spec.startswith("=") and not spec.startswith("=="):
            spec = spec[1:]
        check_name(name, "dependency name")
        parse_specifier(spec)
        if name in out:
            raise ValidationError(f"dependency {name} is given twice")
        out[name] = spec.strip()
    return out


def _ignore_spec(root: Path, excludes: Sequence[str]) -> pathspec.GitIgnoreSpec:
    lines: list[str] = []
    ignore_file = root / IGNORE_FILE
    if ignore_file.is_file():
        lines.extend(ignore_file.read_text("utf-8").splitlines())
    lines.extend(excludes)
    return pathspec.GitIgnoreSpec.from_lines(lines)


def _arcname(relative: str) -> str:
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"file name {relative!r} is not valid UTF-8") from None
    if "\n" in relative:
        raise ValidationError(f"file name {relative!r} contains a newline, which a tree manifest cannot list")
    if "\\" in relative:
        raise ValidationError(
            f"file name {relative!r} contains a backslash, which unzips differently on Windows"
        )
    return relative


def _file_entry(root: Path, path: Path, name: str) -> PackEntry:
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        target = path.resolve()
        if not target.is_relative_to(root):
            raise ValidationError(
                f"refusing symlink {name} -> {os.readlink(path)}: it points outside the folder"
            )
        if not target.exists():
            raise ValidationError(f"refusing symlink {name}: its target does not exist")
        info = target.stat()
        if stat.S_ISDIR(info.st_mode):
            raise ValidationError(f"refusing symlink {name}: it links to a folder")
        path = target
    if not stat.S_ISREG(info.st_mode):
        raise ValidationError(f"refusing {name}: not a regular file")
    return PackEntry(name, path, bool(info.st_mode & stat.S_IXUSR), info.st_size)


def collect(root: Path, excludes: Sequence[str] = (), skip: Iterable[Path] = ()) -> list[PackEntry]:
    """What a pack of ``root`` holds, sorted by name. ``skip`` names files never to pack (outputs)."""
    root = root.resolve()
    if not root.is_dir():
        raise ValidationError(f"{root} is not a folder")
    spec = _ignore_spec(root, excludes)
    skipped = {p.resolve() for p in skip} | {root / IGNORE_FILE}
    entries: list[PackEntry] = []
    for folder, dirnames, filenames in os.walk(root, onerror=_raise):
        here = Path(folder)
        relative_dir = here.relative_to(root).as_posix()
        prefix = "" if relative_dir == "." else relative_dir + "/"
        kept_dirs = []
        for dirname in dirnames:
            name = _arcname(prefix + dirname) + "/"
            if (here / dirname).is_symlink():
                filenames.append(dirname)  # judged (and refused) as a link below
            elif not spec.match_file(name):
                kept_dirs.append(dirname)
                entries.append(PackEntry(name, None))
        dirnames[:] = sorted(kept_dirs)
        for filename in filenames:
            path = here / filename
            name = _arcname(prefix + filename)
            if path in skipped or spec.match_file(name):
                continue
            entries.append(_file_entry(root, path, name))
    entries.sort(key=lambda e: e.name)
    return entries


def _raise(error: OSError) -> None:
    raise error


class _HashingWriter:
    """A write-only, non-seekable stream: zipfile then streams (data descriptors) and we hash as it goes."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self._out.write(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._out.flush()

    def close(self) -> None:
        """The caller closes the underlying file."""


def write_zip(
    entries: Sequence[PackEntry], out: IO[bytes], *, manifest: list[ManifestEntry] | None = None
) -> tuple[str, int]:
    """Write the reproducible zip of ``entries`` to ``out``; return its sha256 and size.

    ``manifest``, when given, gets the tree manifest's entries appended in the zip's order, each file
    hashed from the very bytes written to the zip.
    """
    writer = _HashingWriter(out)
    with zipfile.ZipFile(writer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=_LEVEL) as archive:
        for entry in entries:
            info = zipfile.ZipInfo(entry.name, date_time=_EPOCH)
            info.create_system = 3  # Unix, so that the mode bits below are honoured
            if entry.source is None:
                info.external_attr = (stat.S_IFDIR | 0o755) << 16 | 0x10
                archive.writestr(info, b"")
                if manifest is not None:
                    manifest.append(ManifestEntry.folder(entry.name.removesuffix("/")))
                continue
            mode = 0o755 if entry.executable else 0o644
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            info.file_size = entry.size  # lets zipfile choose ZIP64 up front for large files
            with (
                open(entry.source, "rb") as source,
                archive.open(info, "w", force_zip64=entry.size > 2**31) as dest,
            ):
                digest = hashlib.sha256()
                size = 0
                while chunk := source.read(_CHUNK):
                    dest.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
            if manifest is not None:
                manifest.append(ManifestEntry.file(entry.name, mode, size, digest.hexdigest()))
    writer.flush()
    return writer.sha256.hexdigest(), writer.size


def _seed_ordered(values: dict[str, Any]) -> dict[str, Any]:
    ordered = {key: values[key] for key in _SEED_ORDER if key in values}
    ordered.update({k: v for k, v in values.items() if k not in ordered})
    return ordered


def pack(
    folder: Path,
    out_dir: Path,
    *,
    package: str,
    branch: str,
    version: str,
    description: str = "",
    update_info: str = "",
    local: str | None = None,
    remote: str = "",
    before: str = "",
    after: str = "",
    depends: dict[str, str] | None = None,
    excludes: Sequence[str] = (),
    signing_key: Ed25519PrivateKey | None = None,
) -> PackResult:
    """Write ``out_dir/<package>-<branch>-<version>.zip`` and ``out_dir/content.json`` (signed with
    ``signing_key`` when given)."""
    draft: dict[str, Any] = {
        "package": package,
        "description": description,
        "updateInfo": update_info,
        "version": version,
        "branch": branch,
        "local": local if local is not None else f"./{package}",
        "remote": remote,
        "sha256": "0" * 64,
        "BeforeUpdate": before,
        "AfterUpdate": after,
        "dependencies": depends or {},
    }
    checked = parse_content(draft, "package description")  # names, version, dependencies
    out_dir.mkdir(parents=True, exist_ok=True)
    zip_path = out_dir / checked.file_name
    content_path = out_dir / "content.json"
    temp_zip = out_dir / f".{checked.file_name}.tmp"
    entries = collect(folder, excludes, skip=[zip_path, content_path, temp_zip])
    manifest: list[ManifestEntry] = []
    try:
        with open(temp_zip, "wb") as out:
            sha256, size = write_zip(entries, out, manifest=manifest)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp_zip, zip_path)
    finally:
        temp_zip.unlink(missing_ok=True)
    draft["sha256"] = sha256
    draft["tree_sha256"] = tree_sha256(manifest)
    final = _seed_ordered(draft)
    if signing_key is not None:
        final = sign_content(final, signing_key)
    content = parse_content(final)
    text = json.dumps(content.raw, indent=2, ensure_ascii=False) + "\n"
    write_atomically(content_path, text.encode("utf-8"), mode=0o644)
    return PackResult(zip_path, content_path, content, size, sum(1 for e in entries if e.source is not None))

"""Offline bundles: package versions with their content.json in one file, for devices without a network.

A bundle (format 1) is an uncompressed POSIX tar (PAX) holding, in this order and nothing else:

- ``bundle.json``, the first member (at most 16 MiB)::

      {"format": 1, "created": <unix seconds>,
       "packages": [{"content": <content.json as published, signature included>,
                     "file": "<package>-<branch>-<version>.zip", "size": <bytes>}, ...]}

  ``packages`` is in install order: each package after the packages of the bundle it requires (the one
  asked for last), one version per package. Other keys are ignored, as in content.json.
- one regular file member per package, named its ``file``, in the same order, holding the zip.

Why a tar: it is written and read in one pass, the stdlib reads it, and each zip is its bytes at a known
offset, so a package is copied out (and hashed) without unpacking anything. Reading is strict: any
member that is not exactly the next one listed (a folder, a link, another name, another size) is
refused, and tarfile never reads more than a header's worth at once, so a hostile header cannot make
it allocate gigabytes.

Nothing here checks signatures or trusted keys: the bundle carries the published content.json objects,
and the daemon checks them with its keys (``Bundle.contents``) exactly as for an online install. The
bundle file itself is not signed: a zip is trusted only through its content's sha256
(``Bundle.extract`` checks it), and the content only through its signature.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import tarfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from otakit.content import Content, parse_content
from otakit.dependencies import install_order
from otakit.errors import ValidationError, VerificationError
from otakit.fsutil import fsync_dir, write_all

__all__ = [
    "FORMAT",
    "MANIFEST_NAME",
    "MAX_MANIFEST_BYTES",
    "Bundle",
    "BundleItem",
    "BundledPackage",
    "dependency_order",
    "open_bundle",
    "write_bundle",
]

FORMAT = 1
MANIFEST_NAME = "bundle.json"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
_CHUNK = 1024 * 1024
# The most tarfile may read at once while it parses headers: ours are one 512-byte block, or a PAX
# extended header of a few hundred bytes before it for a long file name.
_MAX_HEADER_READ = 64 * 1024
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE)
_KINDS = {
    tarfile.DIRTYPE: "folder",
    tarfile.SYMTYPE: "symbolic link",
    tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
    tarfile.CONTTYPE: "contiguous file",
    tarfile.GNUTYPE_SPARSE: "sparse file",
}


@dataclass(frozen=True, slots=True)
class BundleItem:
    """A package to write into a bundle: its content.json and its zip on disk."""

    content: Content
    zip_path: Path


@dataclass(frozen=True, slots=True)
class BundledPackage:
    """One package of a bundle, as its ``bundle.json`` lists it (``file`` is ``content.file_name``)."""

    content: Content
    file: str
    size: int


# -- order -----------------------------------------------------------------------------------------


def dependency_order(contents: Sequence[Content]) -> list[Content]:
    """``contents`` in install order: each after those of them it requires, otherwise as given.

    Requirements on a package that is not among ``contents``, or on the package itself (the original
    project listed packages as their own dependency), do not order anything. Already in install order,
    ``contents`` come back as given. Two contents of one package, or a dependency cycle among them,
    raise ValidationError.
    """
    by_name: dict[str, Content] = {}
    for content in contents:
        if content.package in by_name:
            raise ValidationError(
                f"package {content.package} is given twice ({by_name[content.package].version} and "
                f"{content.version}); a bundle holds one version of each package"
            )
        by_name[content.package] = content
    requires = {
        name: [needed for needed in content.requirements if needed in by_name]
        for name, content in by_name.items()
    }
    return [by_name[name] for name in install_order([content.package for content in contents], requires)]


def _check_requirements(contents: Sequence[Content]) -> None:
    """A package of the bundle that another requires must satisfy that requirement (as the daemon
    checks it: pre-releases included)."""
    by_name = {content.package: content for content in contents}
    for content in contents:
        for name, spec in content.requirements.items():
            have = by_name.get(name) if name != content.package else None
            if have is not None and not spec.contains(have.parsed_version, prereleases=True):
                raise ValidationError(
                    f"{content.package} {content.version} needs {name}{spec}, but the bundle's "
                    f"{name} is {have.version}"
                )


# -- writing ---------------------------------------------------------------------------------------


def write_bundle(out_path: Path, items: Sequence[BundleItem]) -> None:
    """Write ``items`` as a bundle at ``out_path``, in install order (see ``dependency_order``).

    Every zip is checked against its content (a regular file, its sha256) before anything is written,
    then streamed into the tar in 1 MiB pieces and hashed again on the way, so the bundle holds exactly
    the bytes that were checked. The bundle is written to a temp file beside ``out_path``, fsynced and
    renamed over it (the folder fsynced too): a crash leaves the old file or the whole new one.

    Raises ValidationError for no items, one package twice, a dependency cycle among them, a bundled
    dependency that does not satisfy its dependent's requirement, or a zip that is not a regular file;
    VerificationError for a zip whose sha256 is not its content's (or that changed while it was
    copied); OSError for files that cannot be read or written. Nothing is left behind on failure.
    """
    if not items:
        raise ValidationError("a bundle needs at least one package")
    ordered = dependency_order([item.content for item in items])
    _check_requirements(ordered)
    by_name = {item.content.package: item for item in items}
    created = int(time.time())
    with ExitStack() as stack:
        sources: list[tuple[BundleItem, BinaryIO, int]] = []
        for content in ordered:
            item = by_name[content.package]
            source = stack.enter_context(_open_regular(item.zip_path, "so not a package zip"))
            size = _check_zip(item, source)
            sources.append((item, source, size))
        manifest = _manifest_bytes(created, [(item.content, size) for item, _, size in sources])
        temp = out_path.with_name(f".{out_path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            with os.fdopen(fd, "wb", buffering=_CHUNK) as out:
                with tarfile.TarFile(
                    fileobj=out, mode="w", format=tarfile.PAX_FORMAT, copybufsize=_CHUNK
                ) as tar:
                    tar.addfile(_member(MANIFEST_NAME, len(manifest), created), _Bytes(manifest))
                    for item, source, size in sources:
                        _add_zip(tar, item, source, size, created)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, out_path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
    fsync_dir(out_path.parent)


def _open_regular(path: Path, why: str) -> BinaryIO:
    """``path`` opened for reading; ValidationError ``"<path> is not a regular file, <why>"`` if it is
    not one (a FIFO is refused without waiting for a writer)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # no effect on a regular file
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValidationError(f"{path} is not a regular file, {why}")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_zip(item: BundleItem, source: BinaryIO) -> int:
    """The size of ``item``'s open zip, after checking its sha256 against its content (streamed)."""
    digest = hashlib.sha256()
    while chunk := source.read(_CHUNK):
        digest.update(chunk)
    size = source.tell()
    if not item.content.sha256_matches(digest.hexdigest()):
        raise VerificationError(
            f"{item.zip_path} does not match the content.json of {item.content.package} "
            f"{item.content.version}: its sha256 is {digest.hexdigest()}, content.json says "
            f"{item.content.sha256}"
        )
    source.seek(0)
    return size


def _manifest_bytes(created: int, packages: Sequence[tuple[Content, int]]) -> bytes:
    manifest = {
        "format": FORMAT,
        "created": created,
        "packages": [
            {"content": content.raw, "file": content.file_name, "size": size} for content, size in packages
        ],
    }
    data = (json.dumps(manifest, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    if len(data) > MAX_MANIFEST_BYTES:
        raise ValidationError(f"{MANIFEST_NAME} would be {len(data)} bytes, over {MAX_MANIFEST_BYTES}")
    return data


def _member(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.type = tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_zip(tar: tarfile.TarFile, item: BundleItem, source: BinaryIO, size: int, created: int) -> None:
    hashing = _HashingReader(source)
    try:
        tar.addfile(_member(item.content.file_name, size, created), hashing)
    except OSError as exc:  # tarfile's "unexpected end of data": the file shrank since it was checked
        raise VerificationError(f"{item.zip_path} changed while the bundle was written ({exc})") from None
    if not item.content.sha256_matches(hashing.digest.hexdigest()):
        raise VerificationError(f"{item.zip_path} changed while the bundle was written")


class _Bytes:
    """Bytes as the file object ``TarFile.addfile`` reads."""

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)

    def read(self, size: int = -1) -> bytes:
        piece = self._view[: size if size >= 0 else len(self._view)]
        self._view = self._view[len(piece) :]
        return bytes(piece)


class _HashingReader:
    """A file read by ``TarFile.addfile``, hashed on the way."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        piece = self._source.read(size)
        self.digest.update(piece)
        return piece


# -- reading ---------------------------------------------------------------------------------------


def open_bundle(path: Path) -> Bundle:
    """Open the bundle at ``path`` and check it whole (``bundle.json`` and every member's header; the
    zips' bytes are checked by ``Bundle.extract``). Close it, or use it as a context manager.

    Raises ValidationError (one sentence naming the file, and the member when one is at fault) when
    ``path`` is not a tar, is truncated, or is not exactly a format-1 bundle: ``bundle.json`` missing,
    not first, over 16 MiB, not valid JSON, of another format, listing an invalid content.json, a file
    name that is not ``<package>-<branch>-<version>.zip`` of its content, a package twice, or a package
    before one of the bundle's packages it requires; a member that is not the next listed zip, not a
    regular file, or not of the listed size; any member after the last zip; ``path`` not a regular
    file. OSError when ``path`` cannot be opened or read.
    """
    file = _open_regular(path, "so not an otakit bundle")
    try:
        return Bundle(path, file)
    except BaseException:
        file.close()
        raise


class Bundle:
    """An open, checked bundle: its packages in install order, and their zips to copy out.

    ``packages``: what ``bundle.json`` lists, in install order; ``created``: its unix time. ``extract``
    may run in several threads at once (it reads with ``os.pread``).
    """

    path: Path
    created: int
    packages: list[BundledPackage]

    def __init__(self, path: Path, file: BinaryIO) -> None:
        """Use ``open_bundle``."""
        self.path = path
        self._file = file
        self._offsets: dict[str, int] = {}
        self._size = os.fstat(file.fileno()).st_size
        reader = _HeaderReader(file, path)
        try:
            tar = tarfile.TarFile(fileobj=reader, mode="r")
        except tarfile.TarError as exc:
            raise ValidationError(f"{path} is not an otakit bundle: not a tar file ({exc})") from None
        with tar:
            first = self._next(tar)
            if first is None or first.name != MANIFEST_NAME:
                what = "it is empty" if first is None else f"its first member is {first.name!r}"
                raise ValidationError(f"{path} is not an otakit bundle: {what}, not {MANIFEST_NAME}")
            self._check_member(first, MANIFEST_NAME, None)
            if first.size > MAX_MANIFEST_BYTES:
                raise ValidationError(
                    f"{path}: {MANIFEST_NAME} is {first.size} bytes, over {MAX_MANIFEST_BYTES}"
                )
            self.created, self.packages = self._parse(self._pread(first.offset_data, first.size))
            for package in self.packages:
                member = self._next(tar)
                if member is None:
                    raise ValidationError(
                        f"{path} ends before {package.file}, which {MANIFEST_NAME} lists (truncated?)"
                    )
                self._check_member(member, package.file, package.size)
                self._offsets[package.file] = member.offset_data
            extra = self._next(tar)
            if extra is not None:
                raise ValidationError(
                    f"{path}: unexpected member {extra.name!r} after the last package; "
                    "a bundle holds nothing but bundle.json and the zips it lists"
                )

    # -- the public API ---------------------------------------------------------------------------

    def contents(self) -> list[Content]:
        """Every package's content.json (signature included), in install order."""
        return [package.content for package in self.packages]

    def find(self, package: str) -> BundledPackage | None:
        """The bundle's version of ``package``, if it holds one."""
        return next((item for item in self.packages if item.content.package == package), None)

    def extract(self, item: BundledPackage, dest: Path) -> None:
        """Copy ``item``'s zip to ``dest``, a new file (mode 0600), streamed in 1 MiB pieces and hashed.

        On return ``dest`` holds exactly the zip, fsynced. When its sha256 is not its content's,
        ``dest`` is deleted and VerificationError raised; when the bundle file has shrunk since it was
        opened, ``dest`` is deleted and ValidationError raised. ValidationError too when ``item`` is not
        one of this bundle's ``packages``; FileExistsError when ``dest`` exists (it is left alone).
        """
        offset = self._offsets.get(item.file)
        if offset is None or self.find(item.content.package) != item:
            raise ValidationError(f"{item.file} is not a package of {self.path}")
        source = self._file.fileno()
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            try:
                digest = hashlib.sha256()
                done = 0
                while done < item.size:
                    piece = os.pread(source, min(_CHUNK, item.size - done), offset + done)
                    if not piece:
                        raise ValidationError(f"{self.path} is truncated: {item.file} ends early")
                    digest.update(piece)
                    write_all(fd, piece)
                    done += len(piece)
                actual = digest.hexdigest()
                if not item.content.sha256_matches(actual):
                    raise VerificationError(
                        f"{item.file} in {self.path} does not match its content.json: its sha256 is "
                        f"{actual}, content.json says {item.content.sha256}"
                    )
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- checks -------------------------------------------------------------------------------------

    def _next(self, tar: tarfile.TarFile) -> tarfile.TarInfo | None:
        try:
            return tar.next()
        except tarfile.TarError as exc:
            raise ValidationError(f"{self.path} is not a valid otakit bundle: {exc} (truncated?)") from None

    def _check_member(self, member: tarfile.TarInfo, name: str, size: int | None) -> None:
        if member.name != name:
            raise ValidationError(
                f"{self.path}: unexpected member {member.name!r} where {MANIFEST_NAME} lists {name!r}"
            )
        if member.type not in _REGULAR or member.sparse is not None:
            kind = _KINDS.get(member.type, f"member of type {member.type!r}")
            raise ValidationError(f"{self.path}: member {member.name!r} is a {kind}, not a regular file")
        if size is not None and member.size != size:
            raise ValidationError(
                f"{self.path}: member {member.name!r} holds {member.size} bytes, "
                f"but {MANIFEST_NAME} says {size}"
            )
        if member.offset_data + member.size > self._size:
            raise ValidationError(
                f"{self.path} is truncated: member {member.name!r} ends past the end of the file"
            )

    def _pread(self, offset: int, size: int) -> bytes:
        pieces: list[bytes] = []
        while size:
            piece = os.pread(self._file.fileno(), min(size, _CHUNK), offset)
            if not piece:
                raise ValidationError(f"{self.path} is truncated: {MANIFEST_NAME} ends early")
            pieces.append(piece)
            offset += len(piece)
            size -= len(piece)
        return b"".join(pieces)

    def _parse(self, data: bytes) -> tuple[int, list[BundledPackage]]:
        """``bundle.json``'s creation time and packages, checked."""
        where = f"{MANIFEST_NAME} in {self.path}"
        try:
            manifest: Any = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValidationError(f"{where} is not valid JSON: {exc}") from None
        if not isinstance(manifest, dict):
            raise ValidationError(f"{where} must be a JSON object")
        if type(manifest.get("format")) is not int or manifest["format"] != FORMAT:
            raise ValidationError(
                f"{where} is of format {manifest.get('format')!r}; this otakit reads format {FORMAT}"
            )
        created, listed = manifest.get("created"), manifest.get("packages")
        if not isinstance(created, int) or isinstance(created, bool) or created < 0:
            raise ValidationError(f"{where}: created must be a whole number of seconds")
        if not isinstance(listed, list) or not listed:
            raise ValidationError(f"{where}: packages must be a non-empty list")
        packages: list[BundledPackage] = []
        index: dict[str, int] = {}
        for number, entry in enumerate(listed, 1):
            package = self._package(entry, f"package #{number} of {where}")
            name = package.content.package
            if name in index:
                raise ValidationError(f"{where} lists package {name} twice")
            index[name] = number
            packages.append(package)
        for number, package in enumerate(packages, 1):
            for needed in sorted(package.content.requirements):
                if needed != package.content.package and index.get(needed, 0) > number:
                    raise ValidationError(
                        f"{where} lists {package.content.package} before {needed}, which it requires; "
                        "packages must be in install order"
                    )
        return created, packages

    @staticmethod
    def _package(entry: object, where: str) -> BundledPackage:
        if not isinstance(entry, dict):
            raise ValidationError(f"{where} must be a JSON object")
        raw, file, size = entry.get("content"), entry.get("file"), entry.get("size")
        if not isinstance(raw, dict):
            raise ValidationError(f"{where}: content must be a content.json object")
        content = parse_content(raw, f"content.json of {where}")
        if file != content.file_name:
            raise ValidationError(f"{where}: file must be {content.file_name!r}, not {file!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValidationError(f"{where}: size must be a whole number of bytes")
        return BundledPackage(content, file, size)


class _HeaderReader:
    """The bundle file as tarfile reads it: no single read may ask for more than a header's worth, so
    a hostile header announcing a huge extended header (or GNU long name) is refused before tarfile
    allocates it. Read-only."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        self._file = file
        self._path = path

    def read(self, size: int = -1, /) -> bytes:
        if size < 0 or size > _MAX_HEADER_READ:
            raise ValidationError(
                f"{self._path} is not a valid otakit bundle: a member header claims "
                f"{'an unbounded' if size < 0 else str(size) + ' bytes of'} extension"
            )
        return self._file.read(size)

    def write(self, data: bytes, /) -> int:
        raise OSError("a bundle is opened read-only")

    def tell(self) -> int:
        return self._file.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET, /) -> int:
        return self._file.seek(offset, whence)

    def close(self) -> None:
        """The bundle closes its file itself."""

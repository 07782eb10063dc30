"""The default file store: a local folder, readable by nginx as it is.

    <root>/<package>/<branch>/<package>-<branch>-<version>.zip   layout: hard links to objects, mode 0644
    <root>/.objects/<upload id>                                    one immutable file per accepted upload
    <root>/.incoming/<upload id>.part                              uploads being received (flock-held)
    <root>/.journal/<upload id>.json                               uploads being committed (flock-held)

Every change that must survive a crash is fsynced, file and folder. A flock marks what a live process
holds, so several server processes can share one folder and each cleans only what a dead one left.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import mmap
import os
import uuid
from pathlib import Path
from typing import BinaryIO

from otakit.fsutil import fsync_dir, write_all
from otakit.server.filestore.base import FileStore, IncomingFile, JournalEntry

__all__ = ["LocalFileStore"]

_ALIGN = 4096
_DIRECT_BLOCK = 4 * 1024 * 1024
_DIR_MODE = 0o755
_FILE_MODE = 0o644


def _mkdirs(path: Path) -> None:
    """Create ``path`` and missing parents, each made durable in its parent."""
    if path.is_dir():
        return
    _mkdirs(path.parent)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=_DIR_MODE)
        fsync_dir(path.parent)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


class _DirectWriter:
    """Writes a file sequentially through O_DIRECT from one reused, page-aligned 4 MiB buffer.

    The bytes go to the disk while the upload streams in, instead of filling the page cache (whose
    fresh pages are slow to touch on the VMs we run on) and being flushed by the final fsync. Where the
    file system refuses O_DIRECT (tmpfs, some overlays) it writes normally.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.direct = self._set_direct(True)
        self._buffer = mmap.mmap(-1, _DIRECT_BLOCK) if self.direct else None
        self._fill = 0

    def _set_direct(self, on: bool) -> bool:
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)
        except OSError:
            return False
        return on

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._buffer is None:
            write_all(self.fd, data)
            return
        view = memoryview(data)
        while view:
            take = min(len(view), _DIRECT_BLOCK - self._fill)
            self._buffer[self._fill : self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == _DIRECT_BLOCK:
                self._flush(_DIRECT_BLOCK)

    def _flush(self, length: int) -> None:
        assert self._buffer is not None
        block = memoryview(self._buffer)[:length]
        try:
            written = os.write(self.fd, block)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            written = 0
        if written != length:  # refused or cut short: finish without O_DIRECT
            self._set_direct(False)
            write_all(self.fd, block[written:])
        block.release()
        self._fill = 0

    def finish(self, size: int) -> None:
        """Write what is buffered; the file is then exactly ``size`` bytes long."""
        if self._buffer is None or self._fill == 0:
            return
        padded = -(-self._fill // _ALIGN) * _ALIGN  # O_DIRECT writes whole aligned blocks
        self._buffer[self._fill : padded] = bytes(padded - self._fill)
        self._flush(padded)
        os.ftruncate(self.fd, size)

    def close(self) -> None:
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None


class _LocalIncoming(IncomingFile):
    def __init__(self, folder: Path) -> None:
        while True:
            self.upload_id = uuid.uuid4().hex
            self.path = folder / f"{self.upload_id}.part"
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A cleaner may have removed the file between open and flock; then start over.
            if os.fstat(fd).st_nlink > 0:
                break
            os.close(fd)
        os.fchmod(fd, _FILE_MODE)
        self.fd = fd
        self.size = 0
        self._hash = hashlib.sha256()
        self._writer = _DirectWriter(fd)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)
        self._writer.write(data)
        self.size += len(data)

    def finish(self) -> str:
        self._writer.finish(self.size)
        os.fsync(self.fd)
        return self._hash.hexdigest()

    def close(self) -> None:
        self._writer.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.close()


class LocalFileStore(FileStore):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self._incoming = self.root / ".incoming"
        self._objects = self.root / ".objects"
        self._journal = self.root / ".journal"
        self._journal_fds: dict[str, int] = {}

    def prepare(self) -> None:
        for folder in (self.root, self._incoming, self._objects, self._journal):
            _mkdirs(folder)

    def ping(self) -> None:
        for folder in (self._incoming, self._objects):
            if not os.access(folder, os.R_OK | os.W_OK | os.X_OK):
                raise OSError(f"{folder} is not a writable folder")

    # -- uploads in flight --------------------------------------------------------------------------
    def incoming(self) -> _LocalIncoming:
        return _LocalIncoming(self._incoming)

    def adopt(self, incoming: IncomingFile) -> None:
        assert isinstance(incoming, _LocalIncoming)
        os.replace(incoming.path, self._object_path(incoming.upload_id))
        fsync_dir(self._objects)
        incoming.close()

    def remove_stale_incoming(self) -> int:
        removed = 0
        for path in self._incoming.iterdir():
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                if _try_lock(fd):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                        removed += 1
            finally:
                os.close(fd)
        return removed

    # -- objects ----------------------------------------------------------------------------------
    def _object_path(self, object_id: str) -> Path:
        return self._objects / object_id

    def open_object(self, object_id: str) -> BinaryIO:
        return open(self._object_path(object_id), "rb")

    def delete_object(self, object_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._object_path(object_id).unlink()

    def object_ids(self) -> list[str]:
        return [entry.name for entry in os.scandir(self._objects) if entry.is_file(follow_symlinks=False)]

    # -- layout -----------------------------------------------------------------------------------
    def layout_path(self, package: str, branch: str, version: str) -> Path:
        return self.root / package / branch / f"{package}-{branch}-{version}.zip"

    def layout_exists(self, package: str, branch: str, version: str) -> bool:
        return self.layout_path(package, branch, version).exists()

    def layout_is(self, package: str, branch: str, version: str, object_id: str) -> bool:
        try:
            entry = self.layout_path(package, branch, version).stat()
            obj = self._object_path(object_id).stat()
        except FileNotFoundError:
            return False
        return (entry.st_dev, entry.st_ino) == (obj.st_dev, obj.st_ino)

    def link_layout(self, package: str, branch: str, version: str, object_id: str) -> None:
        path = self.layout_path(package, branch, version)
        _mkdirs(path.parent)
        temp = path.parent / f".{object_id}.link"
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        os.link(self._object_path(object_id), temp)
        os.replace(temp, path)
        fsync_dir(path.parent)

    def unlink_layout(self, package: str, branch: str, version: str) -> None:
        path = self.layout_path(package, branch, version)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            fsync_dir(path.parent)

    def discard_link(self, package: str, branch: str, upload_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / package / branch / f".{upload_id}.link").unlink()

    # -- journal ----------------------------------------------------------------------------------
    def begin_journal(self, entry: JournalEntry) -> None:
        temp = self._journal / f"{entry.upload_id}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, json.dumps(entry.to_json()).encode())
            os.fsync(fd)
            os.replace(temp, self._journal / f"{entry.upload_id}.json")
            fsync_dir(self._journal)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise
        self._journal_fds[entry.upload_id] = fd

    def end_journal(self, upload_id: str, *, remove: bool = True) -> None:
        if remove:
            with contextlib.suppress(FileNotFoundError):
                (self._journal / f"{upload_id}.json").unlink()
        fd = self._journal_fds.pop(upload_id, None)
        if fd is not None:
            os.close(fd)

    def _unheld(self) -> list[tuple[Path, int]]:
        """Journal files no live process holds, each now locked by us (fd returned)."""
        found = []
        for path in sorted(self._journal.iterdir()):
            if path.stem in self._journal_fds:
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            if _try_lock(fd) and path.exists():
                found.append((path, fd))
            else:
                os.close(fd)
        return found

    def claim_dead_journals(self) -> list[JournalEntry]:
        entries = []
        for path, fd in self._unheld():
            if path.suffix != ".json":  # a journal entry that never finished being written
                path.unlink(missing_ok=True)
                os.close(fd)
                continue
            try:
                data = json.loads(path.read_bytes())
                entry = JournalEntry(data["upload_id"], data["package"], data["branch"], data["version"])
            except (ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)
                os.close(fd)
                continue
            self._journal_fds[entry.upload_id] = fd
            entries.append(entry)
        return entries

    def live_journal_ids(self) -> set[str]:
        dead = self._unheld()
        for _, fd in dead:
            os.close(fd)
        dead_names = {path.stem for path, _ in dead}
        return {path.stem for path in self._journal.iterdir() if path.stem not in dead_names}

"""The local blob store (the default): objects as files in a folder.

    <root>/.objects/<object id>                                    one immutable file per complete object
    <root>/.incoming/<object id>.part                              uploads being received, flock-held
    <root>/<package>/<branch>/<package>-<branch>-<version>.zip     the ``layout``: hard links to objects

The layout (``LocalLayout``) is the seed's URL layout, so that nginx can serve the same folder. Every
disk call runs in a worker thread, never on the event loop. An upload writes its blocks as they come
(through an O_DIRECT writer, at most one block buffered); ``complete()`` fsyncs the file, renames it
into ``.objects`` and fsyncs that folder.

A live upload, of this process or another, holds an flock on its part file; a part file nobody holds is
what a dead process left, and only those are ``unfinished()`` and removed by ``abort_unfinished``.
The root folder must exist (as a bucket must); the two folders in it are made when first needed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TypeVar

from anyio import to_thread

from otakit.errors import UnavailableError
from otakit.fsutil import fsync_dir
from otakit.server.blobstore.base import (
    BlobRange,
    BlobReader,
    BlobStore,
    IncomingBlob,
    RangeNotSatisfiableError,
    check_object_id,
)
from otakit.server.blobstore.layout import LocalLayout
from otakit.server.blobstore.localfs import FILE_MODE, DirectWriter, mkdirs, try_lock

__all__ = ["READ_CHUNK", "LocalBlobStore"]

READ_CHUNK = 1024 * 1024  # what a download reads per thread hop (Starlette's 64 KiB was far slower)
_PART = ".part"

T = TypeVar("T")


class _LocalReader(BlobReader):
    def __init__(self, store: LocalBlobStore, object_id: str, fd: int, span: BlobRange) -> None:
        self._store = store
        self._object_id = object_id
        self._fd = fd
        self._at = span.start
        self._left = span.length
        self.range = span

    async def __anext__(self) -> bytes:
        if self._fd < 0:
            raise StopAsyncIteration
        if self._left <= 0:
            await self.aclose()
            raise StopAsyncIteration
        try:
            chunk = await self._store._run(
                "read an object", os.pread, self._fd, min(READ_CHUNK, self._left), self._at
            )
        except BaseException:
            await self.aclose()
            raise
        if not chunk:  # objects are immutable: only a hand on the folder can cut one short
            await self.aclose()
            raise UnavailableError(f"{self._store._where} cut object {self._object_id} short")
        self._at += len(chunk)
        self._left -= len(chunk)
        return chunk

    async def aclose(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)  # a read-only descriptor: closing it does no disk work


class _LocalIncoming(IncomingBlob):
    def __init__(self, store: LocalBlobStore, object_id: str, path: Path, fd: int) -> None:
        super().__init__(object_id)
        self._store = store
        self._path = path
        self._fd = fd
        self._writer = DirectWriter(fd)

    async def _write(self, view: memoryview) -> None:
        await self._store._run("store an upload's bytes", self._writer.write, view)

    def _finish(self) -> None:
        self._writer.finish(self.size)
        os.fsync(self._fd)
        os.replace(self._path, self._store._object_path(self.object_id))
        fsync_dir(self._store._objects)
        self._close()

    async def _complete(self) -> None:
        await self._store._run("store an object", self._finish)

    def _drop(self, object_may_exist: bool) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()  # still holding the lock: no sweeper can mistake it for a leftover
        if object_may_exist:  # a completion that failed after its rename may have made the object
            self._store._delete(self.object_id)
        self._close()

    async def _abort(self, *, object_may_exist: bool) -> None:
        await self._store._run("abort an upload", self._drop, object_may_exist)

    def _close(self) -> None:
        self._writer.close()
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


class LocalBlobStore(BlobStore):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self._objects = self.root / ".objects"
        self._incoming = self.root / ".incoming"
        self._where = f"the file store at {self.root}"
        self.layout = LocalLayout(self.root)
        self._closed = False

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    # -- plumbing -----------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")

    def _check_root(self) -> None:
        if not self.root.is_dir():
            raise UnavailableError(f"{self._where} is not there: {self.root} is not a folder")

    @contextlib.contextmanager
    def _errors(self, action: str, *, object_id: str | None = None) -> Iterator[None]:
        """Turn the disk's refusals into UnavailableError (and a missing object into FileNotFoundError)."""
        try:
            yield
        except FileNotFoundError as exc:
            self._check_root()
            if object_id is None:
                raise UnavailableError(f"{self._where} failed to {action}: {exc}") from exc
            raise FileNotFoundError(f"no object {object_id} in {self._where}") from exc
        except OSError as exc:
            raise UnavailableError(f"{self._where} failed to {action}: {exc}") from exc

    async def _run(
        self, action: str, call: Callable[..., T], *args: object, object_id: str | None = None
    ) -> T:
        """``call(*args)`` in a worker thread, its OS errors turned into the store's."""

        def work() -> T:
            with self._errors(action, object_id=object_id):
                return call(*args)

        return await to_thread.run_sync(work)

    def _prepare(self) -> None:
        self._check_root()
        mkdirs(self._objects)
        mkdirs(self._incoming)

    def _object_path(self, object_id: str) -> Path:
        return self._objects / check_object_id(object_id)

    def _part_path(self, object_id: str) -> Path:
        return self._incoming / f"{check_object_id(object_id)}{_PART}"

    # -- uploads ----------------------------------------------------------------------------------
    def _begin(self, object_id: str) -> _LocalIncoming:
        self._prepare()
        path = self._part_path(object_id)
        while True:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
            if not try_lock(fd):
                os.close(fd)
                raise RuntimeError(f"an upload of {object_id} is already in flight")
            # A sweeper may have removed a dead upload's file between open and flock; then start over.
            if os.fstat(fd).st_nlink > 0:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)  # what a dead upload of this id left is dropped
            os.fchmod(fd, FILE_MODE)
            return _LocalIncoming(self, object_id, path, fd)
        except BaseException:
            os.close(fd)
            raise

    async def begin(self, object_id: str) -> IncomingBlob:
        check_object_id(object_id)
        self._check_open()
        return await self._run("begin an upload", self._begin, object_id)

    def _locked_by_us(self, path: Path) -> int | None:
        """An fd of ``path`` holding its flock when no live upload holds it, else ``None``."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            if try_lock(fd):
                # Still that file (not removed, nor replaced by a new upload's, since we opened it)?
                current = os.stat(path)
                mine = os.fstat(fd)
                if mine.st_nlink > 0 and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
                    return fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return None

    def _unfinished(self) -> list[str]:
        if not self._incoming.is_dir():
            self._check_root()
            return []
        found = []
        for entry in os.scandir(self._incoming):
            object_id = entry.name.removesuffix(_PART)
            if not entry.name.endswith(_PART) or not entry.is_file(follow_symlinks=False):
                continue
            try:
                check_object_id(object_id)
            except ValueError:  # not one of ours
                continue
            fd = self._locked_by_us(Path(entry.path))
            if fd is not None:
                os.close(fd)
                found.append(object_id)
        return found

    async def unfinished(self) -> list[str]:
        self._check_open()
        return await self._run("list unfinished uploads", self._unfinished)

    def _abort_unfinished(self, object_id: str) -> None:
        path = self._part_path(object_id)
        fd = self._locked_by_us(path)
        if fd is None:  # nothing there, or a live upload holds it
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        finally:
            os.close(fd)

    async def abort_unfinished(self, object_id: str) -> None:
        check_object_id(object_id)
        self._check_open()
        await self._run("abort an unfinished upload", self._abort_unfinished, object_id)

    # -- objects ----------------------------------------------------------------------------------
    def _open_range(self, object_id: str, start: int, end: int | None) -> _LocalReader:
        fd = os.open(self._object_path(object_id), os.O_RDONLY | os.O_CLOEXEC)
        try:
            total = os.fstat(fd).st_size
            if start == 0 and end is None:
                span = BlobRange(0, total - 1, total)
            elif start >= total:
                raise RangeNotSatisfiableError(object_id, start, total)
            else:
                span = BlobRange(start, total - 1 if end is None else min(end, total - 1), total)
            return _LocalReader(self, object_id, fd, span)
        except BaseException:
            os.close(fd)
            raise

    async def open_range(self, object_id: str, start: int = 0, end: int | None = None) -> BlobReader:
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"bad range {start}-{end}")
        check_object_id(object_id)
        self._check_open()
        return await self._run("read an object", self._open_range, object_id, start, end, object_id=object_id)

    async def size(self, object_id: str) -> int:
        path = self._object_path(object_id)
        self._check_open()
        found = await self._run("look up an object", os.stat, path, object_id=object_id)
        return found.st_size

    def _delete(self, object_id: str) -> None:
        try:
            self._object_path(object_id).unlink()
        except FileNotFoundError:
            return
        fsync_dir(self._objects)

    async def delete(self, object_id: str) -> None:
        check_object_id(object_id)
        self._check_open()
        await self._run("delete an object", self._delete, object_id)

    def _object_ids(self) -> list[str]:
        if not self._objects.is_dir():
            self._check_root()
            return []
        return [entry.name for entry in os.scandir(self._objects) if entry.is_file(follow_symlinks=False)]

    async def object_ids(self) -> AsyncIterator[str]:
        self._check_open()
        for object_id in await self._run("list objects", self._object_ids):
            yield object_id

    async def download_url(
        self, object_id: str, *, expires_s: int, filename: str | None = None
    ) -> str | None:
        if expires_s <= 0:
            raise ValueError("expires_s must be positive")
        check_object_id(object_id)
        return None  # the server streams a local object itself

    def _ping(self) -> None:
        self._prepare()
        for folder in (self.root, self._objects, self._incoming):
            if not (folder.is_dir() and os.access(folder, os.R_OK | os.W_OK | os.X_OK)):
                raise UnavailableError(f"{self._where} cannot be used: {folder} is not a writable folder")

    async def ping(self) -> None:
        self._check_open()
        await self._run("answer", self._ping)

    async def close(self) -> None:
        self._closed = True  # nothing to release; uploads in flight hold their own files

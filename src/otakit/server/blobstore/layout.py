"""The local store's layout: each stored version reachable as ``<root>/<package>/<branch>/<file>.zip``.

The seed's URL layout, so that nginx or a CDN can serve the same folder. Each entry is a hard link to the
version's immutable object (``<root>/.objects/<object id>``), put in place with an atomic rename and
made durable; the database row stays the truth, and recovery re-derives the entries of a key from it.
An S3 store has no layout: clients reach its objects through the server (or a presigned URL).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from anyio import to_thread

from otakit.fsutil import fsync_dir
from otakit.server.blobstore.base import check_object_id
from otakit.server.blobstore.localfs import mkdirs

__all__ = ["LocalLayout"]


class LocalLayout:
    """Layout entries of a local blob store rooted at ``root``; disk work runs in worker threads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._objects = root / ".objects"

    def path(self, package: str, branch: str, version: str) -> Path:
        return self.root / package / branch / f"{package}-{branch}-{version}.zip"

    def _object(self, object_id: str) -> Path:
        return self._objects / check_object_id(object_id)

    async def exists(self, package: str, branch: str, version: str) -> bool:
        return await to_thread.run_sync(self.path(package, branch, version).exists)

    def _is(self, package: str, branch: str, version: str, object_id: str) -> bool:
        try:
            entry = self.path(package, branch, version).stat()
            obj = self._object(object_id).stat()
        except FileNotFoundError:
            return False
        return (entry.st_dev, entry.st_ino) == (obj.st_dev, obj.st_ino)

    async def is_object(self, package: str, branch: str, version: str, object_id: str) -> bool:
        """Whether the entry is exactly the given object."""
        return await to_thread.run_sync(self._is, package, branch, version, object_id)

    def _link(self, package: str, branch: str, version: str, object_id: str) -> None:
        path = self.path(package, branch, version)
        mkdirs(path.parent)
        temp = path.parent / f".{object_id}.link"
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        os.link(self._object(object_id), temp)
        os.replace(temp, path)
        fsync_dir(path.parent)

    async def link(self, package: str, branch: str, version: str, object_id: str) -> None:
        """Atomically point the entry at the object (durably)."""
        await to_thread.run_sync(self._link, package, branch, version, object_id)

    def _unlink(self, package: str, branch: str, version: str) -> None:
        path = self.path(package, branch, version)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            fsync_dir(path.parent)

    async def unlink(self, package: str, branch: str, version: str) -> None:
        """Remove the entry, if there is one (durably)."""
        await to_thread.run_sync(self._unlink, package, branch, version)

    def _discard(self, package: str, branch: str, upload_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / package / branch / f".{check_object_id(upload_id)}.link").unlink()

    async def discard_link(self, package: str, branch: str, upload_id: str) -> None:
        """Remove what an interrupted ``link`` of ``upload_id`` may have left."""
        await to_thread.run_sync(self._discard, package, branch, upload_id)

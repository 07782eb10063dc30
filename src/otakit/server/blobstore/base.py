"""The blob store interface: immutable objects named by upload id, reached asynchronously.

One object per accepted upload. An upload streams in through an ``IncomingBlob`` (``begin`` →
``write``… → ``complete`` or ``abort``) and is invisible until ``complete()`` returns; what the database
points at is then the object id. An upload that neither completed nor aborted (its process was killed)
shows in ``unfinished()`` until ``abort_unfinished`` clears it, so that recovery and ``fsck`` can sweep
what a crash left (see ``unfinished`` for what a driver can tell of uploads still in flight). Hashing is
the caller's: a driver only moves bytes.

Errors: a store that cannot be reached or refuses to work (connection errors, timeouts, 5xx, refused
credentials, a missing bucket) raises ``otakit.errors.UnavailableError`` with one sentence; a missing
object raises ``FileNotFoundError`` where the method says so; misuse (a bad object id, a write after
``complete``) raises ``ValueError`` or ``RuntimeError`` and is a bug of the caller.
"""

from __future__ import annotations

import abc
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from otakit.server.blobstore.layout import LocalLayout

__all__ = [
    "BlobRange",
    "BlobReader",
    "BlobStore",
    "IncomingBlob",
    "RangeNotSatisfiableError",
    "check_object_id",
]

_OBJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def check_object_id(object_id: str) -> str:
    """``object_id`` when it is a safe single key segment (upload ids are hex), else ``ValueError``."""
    if not _OBJECT_ID.fullmatch(object_id):
        raise ValueError(f"{object_id!r} is not a valid object id")
    return object_id


@dataclass(frozen=True, slots=True)
class BlobRange:
    """The bytes a reader yields: ``start``..``end`` inclusive of an object of ``total`` bytes.

    For an empty object read whole, ``start`` is 0, ``end`` is -1 and ``length`` is 0.
    """

    start: int
    end: int
    total: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class RangeNotSatisfiableError(ValueError):
    """``open_range`` was asked to start at or past the end of the object (HTTP 416)."""

    def __init__(self, object_id: str, start: int, total: int) -> None:
        super().__init__(f"object {object_id} has {total} bytes; a range cannot start at byte {start}")
        self.object_id = object_id
        self.start = start
        self.total = total


class BlobReader(AsyncIterator[bytes]):
    """The chunks of an object's range, streamed. Iterate to the end or ``aclose()`` it (or both)."""

    range: BlobRange

    def __aiter__(self) -> BlobReader:
        return self

    @abc.abstractmethod
    async def __anext__(self) -> bytes: ...

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the connection; safe to call twice and after the last chunk."""

    async def read_all(self) -> bytes:
        """Every remaining byte (for tests and small objects)."""
        try:
            return b"".join([chunk async for chunk in self])
        finally:
            await self.aclose()


class IncomingBlob(abc.ABC):
    """An upload in flight, not visible to readers until ``complete()`` returns.

    The lifecycle is the same for every driver and lives here: ``open`` → (``write``…) → ``complete``
    (``completing`` until it returns); a failed write or completion leaves it ``failed``, where only
    ``abort()`` is left. ``abort()`` may be tried again until it succeeds, and is refused after a
    completion (delete the object instead). A driver supplies the I/O: ``_write``, ``_complete`` and
    ``_abort``.
    """

    object_id: str
    size: int  # bytes written so far

    def __init__(self, object_id: str) -> None:
        self.object_id = object_id
        self.size = 0
        self._state: Literal["open", "failed", "completing", "complete", "aborting", "aborted"] = "open"
        self._tried_complete = False

    @property
    def completed(self) -> bool:
        """Whether ``complete()`` returned: the object exists, and only deleting it removes it."""
        return self._state == "complete"

    def _check_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"upload of {self.object_id} is {self._state}; only abort() is left")

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` (any size); a driver may buffer it up to its part size."""
        self._check_open()
        with memoryview(data) as whole, whole.cast("B") as view:
            if not view:
                return
            try:
                await self._write(view)
            except BaseException:
                self._state = "failed"
                raise
            self.size += len(view)

    async def complete(self) -> None:
        """Make the object visible under ``object_id`` (durably, as the store defines it)."""
        self._check_open()
        self._state = "completing"
        self._tried_complete = True
        try:
            await self._complete()
        except BaseException:
            self._state = "failed"
            raise
        self._state = "complete"

    async def abort(self) -> None:
        """Drop everything written: no object and no unfinished upload remains. Safe to call twice."""
        if self._state == "aborted":
            return
        if self._state == "complete":
            raise RuntimeError(f"upload of {self.object_id} is complete; delete the object instead")
        self._state = "aborting"  # until it succeeds: no more writes, and abort() may be tried again
        await self._abort(object_may_exist=self._tried_complete)
        self._state = "aborted"

    @abc.abstractmethod
    async def _write(self, view: memoryview) -> None:
        """Store (or buffer) the bytes of ``view``, a non-empty byte view."""

    @abc.abstractmethod
    async def _complete(self) -> None:
        """Whatever the store needs to make the object visible."""

    @abc.abstractmethod
    async def _abort(self, *, object_may_exist: bool) -> None:
        """Drop what was written; with ``object_may_exist`` (a completion was tried and may have got
        through before it failed), delete the object too."""


class BlobStore(abc.ABC):
    """Immutable objects named by upload id."""

    layout: LocalLayout | None = None
    """The seed's ``<package>/<branch>/<file>.zip`` entries beside the objects, for nginx (local only)."""

    @abc.abstractmethod
    async def begin(self, object_id: str) -> IncomingBlob:
        """Start an upload that will become the object ``object_id``."""

    @abc.abstractmethod
    async def open_range(self, object_id: str, start: int = 0, end: int | None = None) -> BlobReader:
        """Stream bytes ``start``..``end`` (inclusive, like HTTP Range; ``None``: to the end).

        An ``end`` past the last byte is cut to it (as HTTP does). ``start`` at or past the end raises
        ``RangeNotSatisfiableError``, except that reading an empty object whole (``start=0, end=None``)
        yields no chunk. ``FileNotFoundError`` when there is no such object. The request is made here,
        so every error comes from this call, before the first chunk.
        """

    @abc.abstractmethod
    async def size(self, object_id: str) -> int:
        """The object's length in bytes; ``FileNotFoundError`` when there is no such object."""

    @abc.abstractmethod
    async def delete(self, object_id: str) -> None:
        """Remove the object; a missing one is fine."""

    @abc.abstractmethod
    def object_ids(self) -> AsyncIterator[str]:
        """Every complete object's id (in no promised order)."""

    @abc.abstractmethod
    async def unfinished(self) -> list[str]:
        """Object ids of uploads begun and neither completed nor aborted. A driver that can tell a live
        upload from a dead one's leftover lists only the leftovers (local: the part files no live process
        holds); one that cannot (S3: every multipart upload in progress, of any process) lists all, and
        the caller must know from elsewhere which are still in flight before it aborts one."""

    @abc.abstractmethod
    async def abort_unfinished(self, object_id: str) -> None:
        """Drop what an unfinished upload of ``object_id`` left; nothing there is fine."""

    @abc.abstractmethod
    async def download_url(
        self, object_id: str, *, expires_s: int, filename: str | None = None
    ) -> str | None:
        """A URL clients can GET (with Range) for ``expires_s`` seconds, or ``None`` when the store has
        none. ``filename`` asks for a ``Content-Disposition: attachment`` with that name. The object is
        not looked up."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise ``UnavailableError`` unless the store answers (and accepts our credentials)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections. Uploads in flight are left as they are (``unfinished()`` finds them)."""

"""The storage interface for package files.

Bytes live in immutable *objects*, one per accepted upload, named by the upload's id. A *layout* entry
per stored version makes the object reachable as ``<package>/<branch>/<package>-<branch>-<version>.zip``
(the seed's URL layout, so nginx or a CDN can serve the same tree). A *journal* entry per upload in
flight names what the upload may have touched, so that recovery after a crash only looks there.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, BinaryIO

__all__ = ["FileStore", "IncomingFile", "JournalEntry"]


@dataclass(frozen=True, slots=True)
class JournalEntry:
    upload_id: str
    package: str
    branch: str
    version: str

    def to_json(self) -> dict[str, Any]:
        return {
            "upload_id": self.upload_id,
            "package": self.package,
            "branch": self.branch,
            "version": self.version,
        }


class IncomingFile(abc.ABC):
    """A temporary file an upload streams into, hashing as it goes. Not visible to readers."""

    upload_id: str
    size: int

    @abc.abstractmethod
    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    @abc.abstractmethod
    def finish(self) -> str:
        """Make the bytes durable and return their sha256 (lower-case hex)."""

    @abc.abstractmethod
    def discard(self) -> None: ...


class FileStore(abc.ABC):
    """Blocking operations: async callers run them in a worker thread."""

    @abc.abstractmethod
    def prepare(self) -> None:
        """Create the store's folders; raise OSError when it cannot be used."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise OSError unless the store can be read and written."""

    @abc.abstractmethod
    def incoming(self) -> IncomingFile: ...

    @abc.abstractmethod
    def adopt(self, incoming: IncomingFile) -> None:
        """Turn a finished incoming file into the object ``incoming.upload_id`` (durably)."""

    @abc.abstractmethod
    def open_object(self, object_id: str) -> BinaryIO:
        """Open an object for reading; FileNotFoundError when it is gone."""

    @abc.abstractmethod
    def delete_object(self, object_id: str) -> None: ...

    @abc.abstractmethod
    def object_ids(self) -> list[str]: ...

    @abc.abstractmethod
    def layout_exists(self, package: str, branch: str, version: str) -> bool: ...

    @abc.abstractmethod
    def layout_is(self, package: str, branch: str, version: str, object_id: str) -> bool:
        """Whether the layout entry is exactly the given object."""

    @abc.abstractmethod
    def link_layout(self, package: str, branch: str, version: str, object_id: str) -> None:
        """Atomically point the layout entry at the object (durably)."""

    @abc.abstractmethod
    def unlink_layout(self, package: str, branch: str, version: str) -> None:
        """Remove the layout entry, if there is one (durably)."""

    @abc.abstractmethod
    def discard_link(self, package: str, branch: str, upload_id: str) -> None:
        """Remove what an interrupted ``link_layout`` of ``upload_id`` may have left."""

    @abc.abstractmethod
    def begin_journal(self, entry: JournalEntry) -> None:
        """Durably record an upload in flight; the entry stays locked by this process until ended."""

    @abc.abstractmethod
    def end_journal(self, upload_id: str, *, remove: bool = True) -> None:
        """Release (and by default remove) a journal entry this process began."""

    @abc.abstractmethod
    def claim_dead_journals(self) -> list[JournalEntry]:
        """Entries whose process died; the caller now holds them and must end them."""

    @abc.abstractmethod
    def live_journal_ids(self) -> set[str]: ...

    @abc.abstractmethod
    def remove_stale_incoming(self) -> int:
        """Delete incoming files no live upload holds; return how many."""

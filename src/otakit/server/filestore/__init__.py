"""Package file storage (see ``base``): a local folder by default."""

from __future__ import annotations

from otakit.server.filestore.base import FileStore, IncomingFile, JournalEntry
from otakit.server.filestore.local import LocalFileStore

__all__ = ["FileStore", "IncomingFile", "JournalEntry", "LocalFileStore"]

"""Package bytes as immutable objects named by upload id, one driver per kind (``local``, ``s3``),
chosen by URL scheme like the database: ``open_blobstore(settings)``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from otakit.errors import ValidationError
from otakit.server.blobstore.base import (
    BlobRange,
    BlobReader,
    BlobStore,
    IncomingBlob,
    RangeNotSatisfiableError,
    check_object_id,
)
from otakit.server.blobstore.local import LocalBlobStore
from otakit.server.blobstore.localfs import mkdirs
from otakit.server.blobstore.s3 import S3BlobStore, s3_store_from_url

if TYPE_CHECKING:
    from otakit.server.settings import ServerSettings

__all__ = [
    "BlobRange",
    "BlobReader",
    "BlobStore",
    "IncomingBlob",
    "LocalBlobStore",
    "RangeNotSatisfiableError",
    "S3BlobStore",
    "check_object_id",
    "local_root",
    "open_blobstore",
    "s3_store_from_url",
]


def local_root(settings: ServerSettings) -> Path | None:
    """The local store's folder (``files_url`` as ``file:``, else ``files_dir``); ``None`` for S3."""
    url = settings.files_url
    if url is None:
        return Path(settings.files_dir)
    parts = urlsplit(url)
    if parts.scheme != "file":
        return None
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise ValidationError(f"{url!r}: write file:///absolute/path or file:relative/path")
    path = unquote(parts.path)
    if not path:
        raise ValidationError(f"{url!r} names no folder")
    return Path(path)


def open_blobstore(settings: ServerSettings) -> BlobStore:
    """The store ``settings`` name; a local folder is created when missing. ``ValidationError`` for a
    URL no driver takes."""
    root = local_root(settings)
    if root is not None:
        mkdirs(root.absolute())
        return LocalBlobStore(root)
    return s3_store_from_url(
        settings.files_url or "",
        endpoint=settings.s3_endpoint,
        region=settings.s3_region,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
        public_endpoint=settings.s3_public_endpoint,
    )

"""Package bytes as immutable objects named by upload id, one driver per kind (``local``, ``s3``)."""

from otakit.server.blobstore.base import (
    BlobRange,
    BlobReader,
    BlobStore,
    IncomingBlob,
    RangeNotSatisfiableError,
    check_object_id,
)
from otakit.server.blobstore.local import LocalBlobStore
from otakit.server.blobstore.s3 import S3BlobStore, s3_store_from_url

__all__ = [
    "BlobRange",
    "BlobReader",
    "BlobStore",
    "IncomingBlob",
    "LocalBlobStore",
    "RangeNotSatisfiableError",
    "S3BlobStore",
    "check_object_id",
    "s3_store_from_url",
]

"""The S3 blob store (aiobotocore): objects at ``<prefix>/objects/<object id>`` in one bucket.

An upload is buffered into part buffers (``part_size``, S3's smallest, 5 MiB, by default), reused;
each full buffer becomes a part of a multipart upload, begun when the first part is full, and is sent
while the next one fills, ``parts_in_flight`` (2) at most at once: memory stays at that many parts plus
the one filling and the caller's block. An upload smaller than one part is a single PutObject at
``complete()``, and so never shows as unfinished. A multipart upload whose process died stays in
ListMultipartUploads under its key, which is how ``unfinished()`` finds it.

Kept thin: botocore's own "standard" retries (few attempts), short connect and read timeouts, path-style
addressing (what SeaweedFS, MinIO and Ceph expect; AWS accepts it too), no checksums beyond what S3
requires (the caller hashes). Presigned URLs are signed for ``public_endpoint`` (the address clients
use) by a second client with the same credentials; signing needs no request.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from otakit.errors import TooLargeError, UnavailableError, ValidationError
from otakit.server.blobstore.base import (
    BlobRange,
    BlobReader,
    BlobStore,
    IncomingBlob,
    RangeNotSatisfiableError,
    check_object_id,
)

if TYPE_CHECKING:
    from aiobotocore.response import StreamingBody
    from types_aiobotocore_s3.client import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

__all__ = ["DEFAULT_PART_SIZE", "MIN_PART_SIZE", "S3BlobStore", "s3_store_from_url"]

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB  # S3's smallest part (all but the last)
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_PARTS = 10_000  # S3's limit: with 5 MiB parts, objects of up to 48.8 GiB
DEFAULT_PART_SIZE = (
    5 * MiB
)  # S3's smallest: memory stays low with several uploads at once (8 MiB was no faster)
READ_CHUNK = 256 * 1024

_MISSING = {"NoSuchKey", "404", "NotFound"}
_BUSY = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling"}
_REFUSED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AuthorizationHeaderMalformed",
    "ExpiredToken",
    "InvalidToken",
}
# Failures of the transport, not of our program: the store is down, slow or cut the connection.
_TRANSPORT_ERRORS = (BotoConnectionError, aiohttp.ClientError, TimeoutError, ConnectionError)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def _content_disposition(filename: str) -> str:
    """``attachment`` with the name, and an RFC 6266 ``filename*`` when it is not plain ASCII."""
    plain = filename.isascii() and filename.isprintable() and not any(c in filename for c in '"\\')
    if plain:
        return f'attachment; filename="{filename}"'
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


class _S3Reader(BlobReader):
    def __init__(self, store: S3BlobStore, object_id: str, body: StreamingBody, span: BlobRange) -> None:
        self._store = store
        self._object_id = object_id
        self._body: StreamingBody | None = body
        self._left = span.length
        self.range = span

    async def __anext__(self) -> bytes:
        if self._body is None:
            raise StopAsyncIteration
        if self._left <= 0:
            await self.aclose()
            raise StopAsyncIteration
        try:
            with self._store._errors("read an object"):
                chunk: bytes = await self._body.read(min(READ_CHUNK, self._left))
        except BaseException:
            await self.aclose()
            raise
        if not chunk:  # botocore raises on a short body; this is only a safety net
            await self.aclose()
            raise UnavailableError(f"the S3 store cut object {self._object_id} short")
        self._left -= len(chunk)
        return chunk

    async def aclose(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            body.close()


class _S3Incoming(IncomingBlob):
    def __init__(self, store: S3BlobStore, object_id: str) -> None:
        super().__init__(object_id)
        self._store = store
        self._key = store._key(object_id)
        # The part being filled, and the free ones: a few buffers allocated as needed and reused for
        # every part. BytesIO, because botocore and aiohttp send it in chunks as it is (raw bytes over
        # 1 MiB block aiohttp's loop).
        self._buffer: io.BytesIO | None = None
        self._fill = 0
        self._free: list[io.BytesIO] = []
        self._sending: list[asyncio.Task[None]] = []  # parts in flight, oldest first
        self._upload_id: str | None = None
        self._next_part = 1
        self._parts: list[CompletedPartTypeDef] = []

    async def _write(self, view: memoryview) -> None:
        part_size = self._store.part_size
        offset = 0
        while offset < len(view):
            if self._buffer is None:
                self._buffer = self._free.pop() if self._free else io.BytesIO()
                self._buffer.seek(0)
            take = min(len(view) - offset, part_size - self._fill)
            self._buffer.write(view[offset : offset + take])
            self._fill += take
            offset += take
            if self._fill == part_size:
                await self._start_part()

    async def _start_part(self) -> None:
        """Send the filled buffer as the next part (beginning the multipart upload), in the background;
        wait for the oldest part when ``parts_in_flight`` are on their way."""
        assert self._buffer is not None
        buffer, size = self._buffer, self._fill
        self._buffer, self._fill = None, 0
        client = await self._store._client()
        if self._upload_id is None:
            with self._store._errors("begin an upload"):
                begun = await client.create_multipart_upload(Bucket=self._store.bucket, Key=self._key)
            self._upload_id = begun["UploadId"]
        number, self._next_part = self._next_part, self._next_part + 1
        if number > MAX_PARTS:
            most = MAX_PARTS * self._store.part_size
            raise TooLargeError(f"{self._store._where} takes uploads of at most {most} bytes")
        self._sending.append(asyncio.create_task(self._send(client, buffer, size, number)))
        if len(self._sending) >= self._store.parts_in_flight:
            await self._sending.pop(0)  # a part's failure comes out here

    async def _send(self, client: S3Client, buffer: io.BytesIO, size: int, number: int) -> None:
        assert self._upload_id is not None
        buffer.truncate(size)  # the last part may be shorter than the ones before
        buffer.seek(0)
        with self._store._errors("store an upload's part"):
            sent = await client.upload_part(
                Bucket=self._store.bucket,
                Key=self._key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=buffer,
            )
        self._parts.append({"ETag": sent["ETag"], "PartNumber": number})
        self._free.append(buffer)  # the next part overwrites it in place

    async def _complete(self) -> None:
        client = await self._store._client()
        if self._upload_id is None:  # smaller than one part: one request, never unfinished
            body: bytes | io.BytesIO = b""
            if self._buffer is not None:
                self._buffer.truncate(self._fill)
                self._buffer.seek(0)
                body = self._buffer
            with self._store._errors("store an object"):
                await client.put_object(Bucket=self._store.bucket, Key=self._key, Body=body)
        else:
            if self._fill:
                await self._start_part()
            while self._sending:
                await self._sending.pop(0)
            with self._store._errors("complete an upload"):
                await client.complete_multipart_upload(
                    Bucket=self._store.bucket,
                    Key=self._key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": sorted(self._parts, key=lambda part: part["PartNumber"])},
                )
        self._buffer = None
        self._free.clear()

    async def _abort(self, *, object_may_exist: bool) -> None:
        for task in self._sending:
            task.cancel()
        for task in self._sending:
            with contextlib.suppress(BaseException):
                await task
        self._sending.clear()
        self._buffer = None
        self._free.clear()
        client = await self._store._client()
        if self._upload_id is not None:
            with contextlib.suppress(_NoSuchUpload), self._store._errors("abort an upload", no_upload=True):
                await client.abort_multipart_upload(
                    Bucket=self._store.bucket, Key=self._key, UploadId=self._upload_id
                )
        if object_may_exist:  # a completion whose answer was lost may have made the object
            await self._store.delete(self.object_id)


class _NoSuchUpload(Exception):
    pass


class S3BlobStore(BlobStore):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
        public_endpoint: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        *,
        parts_in_flight: int = 2,
        max_attempts: int = 3,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        max_connections: int = 20,
    ) -> None:
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ValueError(f"part_size must be between 5 MiB and 5 GiB, not {part_size}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint
        self.region = region
        self.public_endpoint = public_endpoint
        self.part_size = part_size
        self.parts_in_flight = max(1, parts_in_flight)
        self._objects_prefix = f"{self.prefix}/objects/" if self.prefix else "objects/"
        self._access_key = access_key
        self._secret_key = secret_key
        self._config = AioConfig(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            max_pool_connections=max_connections,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._where = f"the S3 store at {endpoint or 'AWS'} (bucket {bucket})"
        self._session = get_session()
        self._stack = contextlib.AsyncExitStack()
        self._lock = asyncio.Lock()
        self._main: S3Client | None = None
        self._public: S3Client | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"S3BlobStore(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint={self.endpoint!r})"

    # -- plumbing -----------------------------------------------------------------------------------
    async def _open_client(self, endpoint: str | None) -> S3Client:
        context = self._session.create_client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=self._access_key,
            aws_secret_access_key=self._secret_key,
            config=self._config,
        )
        return await self._stack.enter_async_context(context)

    async def _client(self) -> S3Client:
        if self._main is None:
            async with self._lock:
                if self._closed:
                    raise RuntimeError(f"{self!r} is closed")
                if self._main is None:
                    self._main = await self._open_client(self.endpoint)
        return self._main

    async def _public_client(self) -> S3Client:
        if self.public_endpoint is None or self.public_endpoint == self.endpoint:
            return await self._client()
        if self._public is None:
            async with self._lock:
                if self._closed:
                    raise RuntimeError(f"{self!r} is closed")
                if self._public is None:
                    self._public = await self._open_client(self.public_endpoint)
        return self._public

    def _key(self, object_id: str) -> str:
        return self._objects_prefix + check_object_id(object_id)

    @contextlib.contextmanager
    def _errors(
        self, action: str, *, object_id: str | None = None, no_upload: bool = False
    ) -> Iterator[None]:
        """Turn the store's failures into UnavailableError (and a missing object into FileNotFoundError)."""
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            if code == "NoSuchBucket":
                raise UnavailableError(f"{self._where} has no such bucket") from exc
            if object_id is not None and (code in _MISSING or status == 404):
                raise FileNotFoundError(f"no object {object_id} in {self._where}") from exc
            if no_upload and (code == "NoSuchUpload" or status == 404):
                raise _NoSuchUpload from exc
            if status >= 500 or code in _BUSY:
                raise UnavailableError(f"{self._where} failed to {action}: {code or status}") from exc
            if status in (401, 403) or code in _REFUSED:
                raise UnavailableError(
                    f"{self._where} refused to {action} ({code or status}): check the access key, "
                    "the secret key and the bucket's permissions"
                ) from exc
            raise
        except _TRANSPORT_ERRORS as exc:
            raise UnavailableError(f"{self._where} cannot be reached to {action}: {exc}") from exc
        except HTTPClientError as exc:  # read timeouts, cut connections, and whatever else aiohttp raised
            cause = exc.kwargs.get("error")
            if type(exc) is HTTPClientError and not isinstance(cause, (*_TRANSPORT_ERRORS, OSError)):
                raise  # not the network: a bug (ours or a library's) must show as one
            raise UnavailableError(f"{self._where} cannot be reached to {action}: {exc}") from exc

    # -- uploads ----------------------------------------------------------------------------------
    async def begin(self, object_id: str) -> IncomingBlob:
        check_object_id(object_id)
        await self._client()
        return _S3Incoming(self, object_id)

    async def unfinished(self) -> list[str]:
        client = await self._client()
        found: dict[str, None] = {}
        with self._errors("list unfinished uploads"):
            pages = client.get_paginator("list_multipart_uploads")
            async for page in pages.paginate(Bucket=self.bucket, Prefix=self._objects_prefix):
                for upload in page.get("Uploads", []):
                    object_id = upload.get("Key", "").removeprefix(self._objects_prefix)
                    if object_id and "/" not in object_id:
                        found[object_id] = None
        return list(found)

    async def abort_unfinished(self, object_id: str) -> None:
        key = self._key(object_id)
        client = await self._client()
        with self._errors("list unfinished uploads"):
            listed = await client.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
        for upload in listed.get("Uploads", []):
            if upload.get("Key") != key or "UploadId" not in upload:
                continue
            with contextlib.suppress(_NoSuchUpload), self._errors("abort an upload", no_upload=True):
                await client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload["UploadId"])

    # -- objects ----------------------------------------------------------------------------------
    async def open_range(self, object_id: str, start: int = 0, end: int | None = None) -> BlobReader:
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"bad range {start}-{end}")
        key = self._key(object_id)
        client = await self._client()
        whole = start == 0 and end is None
        extra: dict[str, Any] = {} if whole else {"Range": f"bytes={start}-{'' if end is None else end}"}
        try:
            with self._errors("read an object", object_id=object_id):
                answer = await client.get_object(Bucket=self.bucket, Key=key, **extra)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 416:
                raise
            raise RangeNotSatisfiableError(object_id, start, await self.size(object_id)) from exc
        body = answer["Body"]
        length = answer["ContentLength"]
        content_range = answer.get("ContentRange")
        if content_range:  # "bytes 1-2/5"
            first_last, _, total_text = content_range.removeprefix("bytes ").partition("/")
            first, _, last = first_last.partition("-")
            span = BlobRange(int(first), int(last), int(total_text))
        else:  # the whole object (asked for, or a range of an empty object)
            span = BlobRange(0, length - 1, length)
            if not whole and start >= length:
                body.close()
                raise RangeNotSatisfiableError(object_id, start, length)
            if not whole:
                body.close()
                raise UnavailableError(f"{self._where} ignored the Range of a read")
        return _S3Reader(self, object_id, body, span)

    async def size(self, object_id: str) -> int:
        key = self._key(object_id)
        client = await self._client()
        with self._errors("look up an object", object_id=object_id):
            head = await client.head_object(Bucket=self.bucket, Key=key)
        return head["ContentLength"]

    async def delete(self, object_id: str) -> None:
        key = self._key(object_id)
        client = await self._client()
        with contextlib.suppress(FileNotFoundError), self._errors("delete an object", object_id=object_id):
            await client.delete_object(Bucket=self.bucket, Key=key)

    async def object_ids(self) -> AsyncIterator[str]:
        client = await self._client()
        with self._errors("list objects"):
            pages = client.get_paginator("list_objects_v2")
            async for page in pages.paginate(Bucket=self.bucket, Prefix=self._objects_prefix):
                for entry in page.get("Contents", []):
                    object_id = entry.get("Key", "").removeprefix(self._objects_prefix)
                    if object_id and "/" not in object_id:
                        yield object_id

    async def download_url(
        self, object_id: str, *, expires_s: int, filename: str | None = None
    ) -> str | None:
        if expires_s <= 0:
            raise ValueError("expires_s must be positive")
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(object_id)}
        if filename is not None:
            params["ResponseContentDisposition"] = _content_disposition(filename)
        client = await self._public_client()
        return await client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_s)

    async def ping(self) -> None:
        client = await self._client()
        try:
            with self._errors("answer"):
                await client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:  # HeadBucket has no body: a 404 is the bucket
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                raise UnavailableError(f"{self._where} has no such bucket") from exc
            raise

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            self._main = self._public = None
            await self._stack.aclose()


def s3_store_from_url(url: str, **settings: Any) -> S3BlobStore:
    """An ``S3BlobStore`` for ``s3://bucket`` or ``s3://bucket/prefix``; ``settings`` go to it as they are."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValidationError(f"{url!r} is not an S3 URL: write s3://bucket or s3://bucket/prefix")
    if parts.query or parts.fragment or "@" in parts.netloc or ":" in parts.netloc:
        raise ValidationError(f"{url!r}: an S3 URL has only a bucket and a prefix (s3://bucket/prefix)")
    bucket = parts.netloc
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValidationError(
            f"{bucket!r} is not a valid S3 bucket name (3 to 63 of a-z, 0-9, '.', '-', starting and "
            "ending with a letter or digit)"
        )
    prefix = parts.path.strip("/")
    segments = prefix.split("/") if prefix else []
    if any(segment in ("", ".", "..") for segment in segments):
        raise ValidationError(f"{url!r}: the prefix has an empty, '.' or '..' segment")
    return S3BlobStore(bucket, prefix, **settings)

"""Streaming a multipart upload straight into the blob store.

The request body goes through python-multipart's ``MultipartParser`` chunk by chunk. The ``content``
part, and any small text field the caller names (the console's ``csrf``), is kept in memory (small and
bounded); the ``file`` part's bytes are batched into large blocks, and each block is hashed in a worker
thread while the store writes it (its own thread, or the network), as the event loop receives the next
one: memory stays flat (two blocks, plus a store's part buffer) and hashing and writing overlap the
network.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

import anyio
import anyio.to_thread
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from otakit.blockwriter import AsyncBlockWriter
from otakit.errors import TooLargeError, ValidationError
from otakit.server.blobstore import IncomingBlob

__all__ = ["BLOCK_SIZE", "FIELD_BYTES", "ReceivedUpload", "receive_upload"]

BLOCK_SIZE = 4 * 1024 * 1024
FIELD_BYTES = 4096  # the most a named text field (``fields``) may hold


@dataclass
class ReceivedUpload:
    content_text: bytes | None = None
    incoming: IncomingBlob | None = None
    """Every byte of the file written, not yet completed: the caller completes or aborts it."""
    digest: str | None = None


class _HashingSink:
    """Hashes each block in a worker thread while the blob store writes it."""

    def __init__(self, blob: IncomingBlob) -> None:
        self.blob = blob
        self.hash = hashlib.sha256()

    async def write(self, block: memoryview) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(anyio.to_thread.run_sync, self.hash.update, block)
            await self.blob.write(block)


async def receive_upload(
    chunks: AsyncIterator[bytes],
    content_type: str | None,
    *,
    new_incoming: Callable[[], Awaitable[IncomingBlob]],
    on_content: Callable[[bytes], Awaitable[None]],
    max_file_bytes: int,
    max_content_bytes: int,
    fields: Mapping[str, Callable[[bytes], Awaitable[None]]] | None = None,
    on_part: Callable[[str], Awaitable[None]] | None = None,
) -> ReceivedUpload:
    """Parse a multipart/form-data body with parts ``content`` and ``file``.

    ``on_content`` is awaited as soon as the ``content`` part is complete, so that the caller can
    refuse the upload (by raising) before the file is read when ``content`` comes first. Each part
    named in ``fields`` (at most ``FIELD_BYTES``) is handed to its callback when it is complete, and
    ``on_part`` is awaited with each part's name as it begins (before a byte of the file is stored), so
    that the console can refuse a file that no valid CSRF token precedes. Other parts are ignored. On
    success or error, the blob ``new_incoming`` made is the caller's to complete or abort.
    """
    extra = dict(fields or {})
    mime, params = parse_options_header(content_type or "")
    boundary = params.get(b"boundary")
    if mime != b"multipart/form-data" or not boundary:
        raise ValidationError("the upload must be multipart/form-data with the parts 'content' and 'file'")

    result = ReceivedUpload()
    events: list[tuple[str, bytes]] = []
    header_field = bytearray()
    header_value = bytearray()
    headers: dict[bytes, bytes] = {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers[bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        events.append(("begin", disposition.get(b"name", b"")))
        headers.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        events.append(("data", data[start:end]))

    def on_part_end() -> None:
        events.append(("end", b""))

    parser = MultipartParser(
        boundary,
        {
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )

    part: str | None = None
    content_buffer = bytearray()
    field_buffer = bytearray()
    writer: AsyncBlockWriter | None = None
    sink: _HashingSink | None = None
    seen: set[str] = set()
    try:
        async for chunk in chunks:
            try:
                parser.write(chunk)
            except MultipartParseError as exc:
                raise ValidationError(f"malformed multipart body: {exc}") from None
            for kind, data in events:
                if kind == "begin":
                    part = data.decode("latin-1")
                    if part in seen and part in ("content", "file"):
                        raise ValidationError(f"the part {part!r} appears twice")
                    seen.add(part)
                    if on_part is not None:
                        await on_part(part)
                    if part == "file":
                        result.incoming = await new_incoming()
                        sink = _HashingSink(result.incoming)
                        writer = AsyncBlockWriter(sink.write, BLOCK_SIZE)
                elif kind == "data":
                    if part == "file" and writer is not None:
                        if writer.received + len(data) > max_file_bytes:
                            raise TooLargeError(
                                f"the package file is larger than the limit of {max_file_bytes} bytes"
                            )
                        await writer.feed(data)
                    elif part == "content":
                        content_buffer += data
                        if len(content_buffer) > max_content_bytes:
                            raise TooLargeError(
                                f"content.json is larger than the limit of {max_content_bytes} bytes"
                            )
                    elif part is not None and part in extra:
                        field_buffer += data
                        if len(field_buffer) > FIELD_BYTES:
                            raise TooLargeError(f"the field {part!r} is larger than {FIELD_BYTES} bytes")
                else:  # end of a part
                    if part == "content":
                        result.content_text = bytes(content_buffer)
                        await on_content(result.content_text)
                    elif part == "file" and writer is not None and sink is not None:
                        await writer.flush()
                        result.digest = sink.hash.hexdigest()
                    elif part is not None and part in extra:
                        value = bytes(field_buffer)
                        field_buffer.clear()
                        await extra[part](value)
                    part = None
            events.clear()
        try:
            parser.finalize()
        except MultipartParseError as exc:
            raise ValidationError(f"malformed multipart body: {exc}") from None
        if part is not None or (result.incoming is not None and result.digest is None):
            raise ValidationError("the multipart body ended in the middle of a part")
    except BaseException:
        if writer is not None:
            await writer.abandon()
        raise
    return result

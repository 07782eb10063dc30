"""``PUT /upload``: a verified, streamed, crash-safe upload (DESIGN.md, "Upload, exactly").

``receive_version`` is the whole upload on a request stream; the console's upload form calls it too, so
a browser's upload is verified and stored exactly as a publisher's.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.datastructures import Headers

from otakit.content import Content, parse_content
from otakit.errors import TooLargeError, ValidationError
from otakit.server.blobstore import BlobStore, IncomingBlob
from otakit.server.deps import InFlightDep, PublisherDep, RepoDep, SettingsDep, StoreDep
from otakit.server.inflight import InFlight
from otakit.server.metrics import count_received
from otakit.server.publish import begin_upload, discard, publish, version_exists
from otakit.server.receive import receive_upload
from otakit.server.repository import Repository, VersionKey
from otakit.server.settings import ServerSettings
from otakit.web import answer

__all__ = ["UploadOptions", "receive_version", "router", "truthy"]

router = APIRouter(tags=["upload"])

_MULTIPART_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["content", "file"],
                    "properties": {
                        "content": {"type": "string", "description": "content.json (a text field or a file)"},
                        "file": {"type": "string", "format": "binary", "description": "the package zip"},
                    },
                }
            }
        },
    }
}
_TRUE = {"1", "true", "yes", "on"}
_OVERHEAD = 64 * 1024  # multipart boundaries and part headers


def _canonical_text(content: Content) -> str:
    """The content's values exactly as uploaded, as compact JSON (key order kept)."""
    try:
        return json.dumps(content.raw, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise ValidationError("content.json must not contain NaN or Infinity") from None


def truthy(value: str | None) -> bool:
    """A query or form flag that is on (``1``, ``true``, ``yes``, ``on``)."""
    return (value or "").lower() in _TRUE


@dataclass
class UploadOptions:
    """What the uploader asked for. Read when used, so that form fields sent before ``content`` (the
    console's checkboxes) can still set them while the body streams."""

    force: bool = False
    hold: bool = False


async def receive_version(
    repo: Repository,
    store: BlobStore,
    inflight: InFlight,
    settings: ServerSettings,
    chunks: AsyncIterator[bytes],
    headers: Headers,
    options: UploadOptions,
    *,
    fields: Mapping[str, Callable[[bytes], Awaitable[None]]] | None = None,
    on_part: Callable[[str], Awaitable[None]] | None = None,
) -> Content:
    """Stream a multipart upload (``content`` and ``file``) from ``chunks``, verify it and publish it;
    the content it published. ``fields`` and ``on_part`` are ``receive_upload``'s: other small parts,
    and a check as each part begins. Raises the ``OtakitError`` that says why it was refused; nothing
    stays stored then."""
    limit = settings.max_upload_bytes + settings.max_content_bytes + _OVERHEAD
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLargeError(f"the upload is larger than the limit of {settings.max_upload_bytes} bytes")

    incoming: IncomingBlob | None = None
    checked: Content | None = None

    async def new_incoming() -> IncomingBlob:
        nonlocal incoming
        incoming = await begin_upload(store, inflight)
        return incoming

    async def on_content(text: bytes) -> None:
        nonlocal checked
        checked = parse_content(text)
        if incoming is None and not options.force:
            # content came first: refuse a duplicate before reading a byte of the file.
            key = VersionKey(checked.package, checked.branch, checked.version_key)
            row = await repo.get(key)
            layout = store.layout
            if row is not None or (
                layout is not None and await layout.exists(checked.package, checked.branch, checked.version)
            ):
                raise version_exists(checked, row)

    try:
        received = await receive_upload(
            chunks,
            headers.get("content-type"),
            new_incoming=new_incoming,
            on_content=on_content,
            max_file_bytes=settings.max_upload_bytes,
            max_content_bytes=settings.max_content_bytes,
            fields=fields,
            on_part=on_part,
        )
        if received.content_text is None or checked is None:
            raise ValidationError("the 'content' part (content.json) is missing")
        if incoming is None or received.digest is None:
            raise ValidationError("the 'file' part (the package zip) is missing")
        if not checked.sha256_matches(received.digest):
            raise ValidationError(
                f"sha256 mismatch: content.json says {checked.sha256.lower()}, the file is {received.digest}"
            )
    except BaseException:
        if incoming is not None:
            await discard(store, inflight, incoming)
        raise
    await publish(
        repo,
        store,
        inflight,
        checked,
        incoming,
        _canonical_text(checked),
        force=options.force,
        released=not options.hold,
    )
    return checked


@router.put("/upload", summary="Publish a package version", openapi_extra=_MULTIPART_SCHEMA)
async def upload(
    request: Request,
    repo: RepoDep,
    store: StoreDep,
    inflight: InFlightDep,
    settings: SettingsDep,
    publisher: PublisherDep,
    force: Annotated[str | None, Query(description="1 = replace an existing version", max_length=10)] = None,
    overwrite: Annotated[str | None, Query(description="the same as force", max_length=10)] = None,
    hold: Annotated[
        str | None,
        Query(description="1 = store the version held: listed, not offered by /latestVersion", max_length=10),
    ] = None,
) -> Response:
    options = UploadOptions(force=truthy(force) or truthy(overwrite), hold=truthy(hold))
    chunks = count_received(request.scope, request.stream())  # otakit_upload_bytes_total, as it streams
    await receive_version(repo, store, inflight, settings, chunks, request.headers, options)
    return answer(200)

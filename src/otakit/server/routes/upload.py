"""``PUT /upload``: a verified, streamed, crash-safe upload (DESIGN.md, "Upload, exactly")."""

from __future__ import annotations

import json
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from otakit.content import Content, parse_content
from otakit.errors import TooLargeError, ValidationError
from otakit.server.deps import PublisherDep, RepoDep, SettingsDep, StoreDep
from otakit.server.filestore import IncomingFile
from otakit.server.publish import publish, version_exists
from otakit.server.receive import receive_upload
from otakit.server.repository import VersionKey
from otakit.web import answer

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


@router.put("/upload", summary="Publish a package version", openapi_extra=_MULTIPART_SCHEMA)
async def upload(
    request: Request,
    repo: RepoDep,
    store: StoreDep,
    settings: SettingsDep,
    publisher: PublisherDep,
    force: Annotated[str | None, Query(description="1 = replace an existing version", max_length=10)] = None,
    overwrite: Annotated[str | None, Query(description="the same as force", max_length=10)] = None,
    hold: Annotated[
        str | None,
        Query(description="1 = store the version held: listed, not offered by /latestVersion", max_length=10),
    ] = None,
) -> Response:
    forced = (force or "").lower() in _TRUE or (overwrite or "").lower() in _TRUE
    held = (hold or "").lower() in _TRUE
    limit = settings.max_upload_bytes + settings.max_content_bytes + _OVERHEAD
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLargeError(f"the upload is larger than the limit of {settings.max_upload_bytes} bytes")

    file_started = False
    checked: Content | None = None

    async def new_incoming() -> IncomingFile:
        nonlocal file_started
        file_started = True
        return await anyio.to_thread.run_sync(store.incoming)

    async def on_content(text: bytes) -> None:
        nonlocal checked
        checked = parse_content(text)
        if not file_started and not forced:
            # content came first: refuse a duplicate before reading a byte of the file.
            key = VersionKey(checked.package, checked.branch, checked.version_key)
            row = await repo.get(key)
            if row is not None or await anyio.to_thread.run_sync(
                store.layout_exists, checked.package, checked.branch, checked.version
            ):
                raise version_exists(checked, row)

    received = await receive_upload(
        request.stream(),
        request.headers.get("content-type"),
        new_incoming=new_incoming,
        on_content=on_content,
        max_file_bytes=settings.max_upload_bytes,
        max_content_bytes=settings.max_content_bytes,
    )
    incoming = received.incoming
    try:
        if received.content_text is None or checked is None:
            raise ValidationError("the 'content' part (content.json) is missing")
        if incoming is None or received.digest is None:
            raise ValidationError("the 'file' part (the package zip) is missing")
        if not checked.sha256_matches(received.digest):
            raise ValidationError(
                f"sha256 mismatch: content.json says {checked.sha256.lower()}, the file is {received.digest}"
            )
        await publish(
            repo, store, checked, incoming, _canonical_text(checked), force=forced, released=not held
        )
    finally:
        if incoming is not None:
            await anyio.to_thread.run_sync(incoming.discard)
    return answer(200)

"""The server's file response: an object of the blob store, streamed (whole or one range)."""

from __future__ import annotations

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from otakit.server.blobstore import BlobReader

__all__ = ["BlobResponse"]


class BlobResponse(StreamingResponse):
    """Streams ``reader``'s chunks (already opened, so every store error came before the status line)
    and closes it however the response ends: finished, failed, or the client gone."""

    def __init__(self, reader: BlobReader, *, status_code: int, headers: dict[str, str]) -> None:
        self._reader = reader
        super().__init__(reader, status_code=status_code, headers=headers, media_type="application/zip")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._reader.aclose()

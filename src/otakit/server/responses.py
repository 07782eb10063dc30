"""The server's file response."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import BinaryIO

import anyio
from starlette.responses import FileResponse
from starlette.types import Receive, Scope, Send

__all__ = ["ObjectFileResponse"]


class ObjectFileResponse(FileResponse):
    """Starlette's FileResponse (Range, HEAD) over an already-open file, read in large chunks.

    Opening the file in the route pins the object: a concurrent ``force`` upload that deletes it cannot
    pull it away mid-response. 64 KiB reads (Starlette's default) were far slower than nginx here.
    """

    chunk_size = 1024 * 1024

    def __init__(self, file: BinaryIO, *, etag: str, filename: str) -> None:
        stat_result = os.fstat(file.fileno())
        super().__init__(
            os.devnull,
            headers={"etag": etag},
            media_type="application/zip",
            filename=filename,
            stat_result=stat_result,
        )
        self._file = file

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._file.close()

    @contextlib.asynccontextmanager
    async def _open_file(self) -> AsyncIterator[anyio.AsyncFile[bytes]]:
        yield anyio.AsyncFile(self._file)

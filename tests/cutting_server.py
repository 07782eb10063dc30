"""A small HTTP/1.1 server on loopback that serves one file and misbehaves on demand, for download tests.

Every path under ``/otafiles/`` is the file; the paths in ``routes`` answer their JSON body. It honours
``Range: bytes=N-`` (206 with Content-Range, 416 past the end) and ``If-Range`` against its ETag, and it
records every request it saw in ``seen``. With ``redirect_ttl`` it answers the file's path as an otakit
server in redirect mode does: 307 to a ``/signed/…`` link that expires after that many seconds (403
then, as S3 refuses an expired presigned URL) and serves the file (ETag its own, not the sha256).
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs

__all__ = ["CuttingServer", "Seen"]

_PIECE = 64 * 1024


@dataclass(frozen=True)
class Seen:
    path: str
    range: str | None
    if_range: str | None
    status: int


@dataclass
class CuttingServer:
    data: bytes
    cut_after: int | None = None  # stop sending after this many body bytes ...
    cuts: int = 0  # ... on this many file requests (the first ones)
    stall: bool = False  # at a cut, stop sending but keep the connection open (until the server stops)
    errors: int = 0  # answer the first requests with 500
    wrong_bytes: bool = False  # serve the file with its first byte changed
    announce: int | None = None  # the file size to announce (Content-Length, Content-Range total)
    no_length: bool = False  # send the whole file close-delimited, without Content-Length
    ignore_range: int = 0  # answer this many Range requests with 200 and the whole file
    routes: dict[str, bytes] = field(default_factory=dict)
    redirect_ttl: float | None = None  # answer the file's path with 307 to a link valid this long
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.etag = f'"{hashlib.sha256(self.data).hexdigest()}"'
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05})

    def __enter__(self) -> CuttingServer:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stopped.set()
        self._httpd.shutdown()
        self._httpd.server_close()  # joins the handler threads
        self._thread.join()

    @property
    def ranges(self) -> list[str | None]:
        """The Range header of every file request, in order."""
        return [seen.range for seen in self.seen if _is_file(self, seen.path)]

    def _decide(
        self, path: str, query: str, range_header: str | None, if_range: str | None
    ) -> tuple[int, int, bool]:
        """(status, first byte, cut this answer?) for one request; records it."""
        with self._lock:
            size = self.announce if self.announce is not None else len(self.data)
            start = 0
            etag = self.etag if self.redirect_ttl is None else '"signed-object"'
            if self.errors > 0:
                self.errors -= 1
                status = 500
            elif self.redirect_ttl is not None and path.startswith("/otafiles/"):
                status = 307
            elif path.startswith("/signed/") and float(parse_qs(query)["expires"][0]) < time.time():
                status = 403
            elif not _is_file(self, path):
                status = 200 if path in self.routes else 404
            elif range_header is None or (if_range is not None and if_range != etag):
                status = 200
            elif self.ignore_range > 0:
                self.ignore_range -= 1
                status = 200
            else:
                start = int(range_header.removeprefix("bytes=").removesuffix("-"))
                status = 206 if start < size else 416
            cut = status in (200, 206) and _is_file(self, path) and self.cuts > 0
            if cut:
                self.cuts -= 1
            self.seen.append(Seen(path, range_header, if_range, status))
            return status, start, cut


def _is_file(server: CuttingServer, path: str) -> bool:
    """Whether ``path`` serves the file: its otakit path, or in redirect mode the signed link."""
    return path.startswith("/signed/" if server.redirect_ttl is not None else "/otafiles/")


def _handler(server: CuttingServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 10

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            status, start, cut = server._decide(path, query, self.headers["Range"], self.headers["If-Range"])
            try:
                self._answer(path, status, start, cut)
            except OSError:  # the client went away
                self.close_connection = True

        def _answer(self, path: str, status: int, start: int, cut: bool) -> None:
            if _is_file(server, path) and status in (200, 206):
                self._send_file(status, start, cut)
                return
            if status == 307:
                assert server.redirect_ttl is not None
                self.send_response(307)
                self.send_header("Location", f"/signed/object?expires={time.time() + server.redirect_ttl}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = b"" if status == 416 else server.routes.get(path, b'{"status":%d,"error":"test"}' % status)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if status == 416:
                self.send_header("Content-Range", f"bytes */{len(server.data)}")
            self.end_headers()
            self.wfile.write(body)

        def _send_file(self, status: int, start: int, cut: bool) -> None:
            data = server.data
            if server.wrong_bytes:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            size = server.announce if server.announce is not None else len(data)
            self.send_response(status)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            self.send_header("Content-Type", "application/zip")
            self.send_header("ETag", server.etag if server.redirect_ttl is None else '"signed-object"')
            self.send_header("Accept-Ranges", "bytes")
            if server.no_length or server.announce is not None:
                self.send_header("Connection", "close")
                self.close_connection = True
            if not server.no_length:
                self.send_header("Content-Length", str(size - start))
            self.end_headers()
            body = data[start:]
            if cut and server.cut_after is not None:
                body = body[: server.cut_after]
            for offset in range(0, len(body), _PIECE):
                self.wfile.write(body[offset : offset + _PIECE])
            if cut:
                if server.stall:
                    server._stopped.wait(10)
                self.close_connection = True

    return Handler

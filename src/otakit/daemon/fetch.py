"""The daemon's network access to otakit servers: what is the latest version, and the package files.

Everything that can go wrong on the wire comes out as one of our errors, never an httpx one:
``DownloadError`` (unreachable, cut, timed out, 5xx — after the retries), ``NotFoundError`` (404),
``VerificationError`` (a content.json or a file that is not what it should be), ``TooLargeError``
(over ``max_bytes``) and ``ValidationError`` (a remote that is not an http(s) URL).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urljoin, urlsplit

import anyio
import anyio.to_thread
import httpx

import otakit
from otakit.blockwriter import BlockWriter
from otakit.content import Content, parse_content
from otakit.errors import (
    DownloadError,
    NotFoundError,
    OtakitError,
    TooLargeError,
    ValidationError,
    VerificationError,
)
from otakit.urls import http_base

__all__ = ["Fetcher", "Progress"]

Progress = Callable[[int, int | None], None]  # (bytes of the file on disk so far, its total size or None)

_CHUNK = 1024 * 1024  # written and hashed (in a thread) and reported per block
_MAX_JSON = 16 * 1024 * 1024  # an answer of /latestVersion or /getVersion larger than this is refused
_MAX_DELAY = 60.0
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_REDIRECTS = (301, 302, 303, 307, 308)
_T = TypeVar("_T")


class _Retry(Exception):
    """An attempt failed in a way worth trying again (its message is the one-line reason)."""


class _Sink:
    """The destination file and the sha256 of what it holds. Every method blocks: run it in a thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.file = open(path, "a+b")  # noqa: SIM115 - closed by close()
        self.hash = hashlib.sha256()
        self.size = 0
        self.file.seek(0)
        while block := self.file.read(_CHUNK):
            self.hash.update(block)
            self.size += len(block)
        self.reused = self.size > 0  # bytes from an earlier call are on disk

    def write(self, chunk: memoryview) -> None:
        self.file.write(chunk)
        self.hash.update(chunk)
        self.size += len(chunk)

    def restart(self) -> None:
        self.file.truncate(0)
        self.hash = hashlib.sha256()
        self.size = 0
        self.reused = False

    def finish(self) -> str:
        """Flush what was written and return the sha256 of the whole file. Not fsynced: a downloaded
        file is a step on the way (what is installed from it is fsynced before it is swapped in), and
        one that a crash damages is resumed and checked against its sha256 like any other, so its bytes
        need never reach the disk; deleted soon after, they mostly never do."""
        self.file.flush()
        return self.hash.hexdigest()

    def close(self) -> None:
        # A failed flush loses only the end of the buffer: the file still starts with the right bytes.
        with contextlib.suppress(OSError):
            self.file.close()

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _base_url(remote: str) -> str:
    return http_base(remote, "remote")


def _error_message(body: bytes, default: str) -> str:
    try:
        message = json.loads(body).get("error")
    except (ValueError, AttributeError):
        message = None
    return message if isinstance(message, str) and message else default


class Fetcher:
    """Asks otakit servers for versions and downloads package files, resuming and verifying.

    ``retries`` is how many times one call tries again after a cut connection, a timeout or a 5xx answer,
    waiting ``backoff``, then twice as long each time (at most 60 s). Use one Fetcher for many calls and
    close it (``aclose`` or ``async with``).
    """

    def __init__(
        self,
        *,
        retries: int = 5,
        max_bytes: int = 10 * 1024**3,
        timeout: float = 30.0,
        backoff: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retries = retries
        self.max_bytes = max_bytes
        self.backoff = backoff
        self._identity: tuple[str, str] | None = None
        self._http = httpx.AsyncClient(
            headers={"User-Agent": f"otakit-daemon/{otakit.__version__}"},
            timeout=httpx.Timeout(timeout),
            follow_redirects=True,
            transport=transport,
        )

    def identify(self, registry: str, device: str) -> None:
        """Name ``device`` in the /latestVersion queries sent to ``registry`` (the fleet server), so that
        it can answer with what a staged rollout offers this device; other servers are not told."""
        self._identity = (_base_url(registry), device)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Fetcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def latest(
        self, remote: str, package: str, branch: str, etag: str | None = None
    ) -> tuple[Content | None, str | None]:
        """The highest version of ``package`` on ``branch`` and the answer's ETag.

        With ``etag`` (from an earlier call) the server may answer "not modified": then ``(None, etag)``.
        No version -> NotFoundError; an invalid content.json, or one for another package or branch ->
        VerificationError.
        """
        base = _base_url(remote)
        url = base + "/latestVersion"
        headers = {"If-None-Match": etag} if etag else {}
        params = {"package": package, "branch": branch}
        if self._identity is not None and self._identity[0] == base:
            params["device"] = self._identity[1]
        status, answer_headers, body = await self._get_small(url, params, headers)
        if status == 304:
            return None, answer_headers.get("etag", etag)
        data = self._json_answer(url, status, body, f"no version of {package} on branch {branch}")
        content = self._content(data.get("content.json"), url, package, branch)
        return content, answer_headers.get("etag")

    async def versions(self, remote: str, package: str, branch: str) -> list[Content]:
        """Every version of ``package`` on ``branch``, highest first as the server lists them; [] if none.

        Any invalid entry, or one for another package or branch -> VerificationError.
        """
        url = _base_url(remote) + "/getVersion"
        status, _, body = await self._get_small(url, {"package": package, "branch": branch}, {})
        if status == 404:
            return []
        listed = self._json_answer(url, status, body, "").get("list")
        if not isinstance(listed, list):
            raise VerificationError(f"{url} answered without a list")
        return [
            self._content(entry.get("content") if isinstance(entry, dict) else None, url, package, branch)
            for entry in listed
        ]

    async def download(
        self, content: Content, dest: Path, progress: Progress | None = None, *, remote: str | None = None
    ) -> None:
        """Download ``content``'s zip from ``remote`` (default ``content.remote``) into ``dest``, verified.

        Bytes already in ``dest`` are taken as the start of this file and the rest is asked for with Range
        (with If-Range, so a replaced file comes whole). When the finished file does not match
        ``content.sha256`` and it began with such bytes, it is fetched once more from zero; otherwise
        ``dest`` is deleted and VerificationError raised. ``dest`` is deleted on TooLargeError too; after
        a DownloadError it keeps what arrived, so calling again resumes. On return ``dest`` holds exactly
        the file, flushed (not fsynced: see ``_Sink.finish``). ``progress`` is called after every chunk
        written.
        """
        base = _base_url(remote if remote is not None else content.remote)
        segments = (content.package, content.branch, content.file_name)
        url = base + "/otafiles/" + "/".join(quote(segment, safe="") for segment in segments)
        await self._fetch_file(url, content.sha256.lower(), "content.json", dest, progress)

    async def download_delta(
        self,
        installed: Content,
        target: Content,
        dest: Path,
        progress: Progress | None = None,
        *,
        remote: str,
    ) -> int | None:
        """Download the delta from ``installed``'s version to ``target``'s into ``dest``: its size, or
        ``None`` when the server has none (404: take the zip). Asked with HEAD first (the server makes
        it then, once, and names its sha256 as ETag), then fetched, resumed and verified like a zip.
        The delta's bytes are only checked against the server's word here: what makes them safe to use
        is the tree check against the signed ``tree_sha256`` once they are applied."""
        segments = (target.package, target.branch, installed.version, target.version)
        url = _base_url(remote) + "/otadelta/" + "/".join(quote(segment, safe="") for segment in segments)

        async def ask() -> str | None:
            try:
                response = await self._http.head(url, follow_redirects=False)
            except httpx.HTTPError as exc:
                raise _Retry(_describe(exc)) from None
            if response.status_code == 404:
                return None
            if response.status_code >= 500:
                raise _Retry(f"the server answered HTTP {response.status_code}")
            etag = str(response.headers.get("etag", "")).strip('"')
            if response.status_code not in (200, 307) or not re.fullmatch(r"[0-9a-f]{64}", etag):
                raise DownloadError(
                    f"cannot download {url}: HTTP {response.status_code} without a delta's ETag"
                )
            return etag

        sha256 = await self._with_retries(f"cannot ask for {url}", ask)
        if sha256 is None:
            return None
        await self._fetch_file(url, sha256, "the server's ETag", dest, progress)
        return dest.stat().st_size

    async def _fetch_file(
        self, url: str, sha256: str, says: str, dest: Path, progress: Progress | None
    ) -> None:
        try:
            sink = await anyio.to_thread.run_sync(_Sink, dest)
        except OSError as exc:
            raise OtakitError(f"cannot write {dest}: {exc.strerror or exc}") from None
        try:
            await self._download(url, sha256, says, sink, progress)
        except (TooLargeError, VerificationError):
            await anyio.to_thread.run_sync(sink.discard)
            raise
        except OSError as exc:
            raise OtakitError(f"cannot write {dest}: {exc.strerror or exc}") from None
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(sink.close)

    async def _download(
        self, url: str, sha256: str, says: str, sink: _Sink, progress: Progress | None
    ) -> None:
        while True:
            await self._with_retries(
                f"cannot download {url}", lambda: self._transfer(url, sha256, sink, progress)
            )
            digest = await anyio.to_thread.run_sync(sink.finish)
            if digest == sha256:
                return
            if not sink.reused:
                raise VerificationError(
                    f"{url} has sha256 {digest} ({sink.size} bytes), but {says} says {sha256}"
                )
            await anyio.to_thread.run_sync(sink.restart)  # the bytes found on disk were not this file's

    async def _transfer(self, url: str, sha256: str, sink: _Sink, progress: Progress | None) -> None:
        """One request: append the rest of the file to ``sink``; return when the server says it is whole."""
        headers = {"Accept-Encoding": "identity"}
        if sink.size:
            headers |= {"Range": f"bytes={sink.size}-", "If-Range": f'"{sha256}"'}
        start, total = sink.size, -1  # total -1: unknown

        def written(size: int) -> None:
            if progress is not None:
                progress(start + size, total if total >= 0 else None)

        writer = BlockWriter(sink.write, _CHUNK, written)
        try:
            try:
                async with self._open(url, headers) as response:
                    status = response.status_code
                    if status == 416 and sink.size:
                        return  # we have as many bytes as the file or more: the caller verifies
                    if status == 200:
                        total = int(response.headers.get("content-length", -1))
                        if sink.size:
                            await anyio.to_thread.run_sync(sink.restart)  # the server sends the whole file
                            start = 0
                    elif status == 206:
                        total = self._range_total(url, response, sink.size)
                    elif status == 404:
                        raise NotFoundError(f"no file at {url}")
                    elif status >= 500:
                        raise _Retry(f"the server answered HTTP {status}")
                    else:
                        raise DownloadError(f"cannot download {url}: the server answered HTTP {status}")
                    if total > self.max_bytes:
                        raise TooLargeError(f"{url} is {total} bytes, over the limit of {self.max_bytes}")
                    async for piece in response.aiter_bytes():
                        if start + writer.received + len(piece) > self.max_bytes:
                            raise TooLargeError(f"{url} sent more than the limit of {self.max_bytes} bytes")
                        await writer.feed(piece)
            except httpx.HTTPError as exc:
                await writer.flush()  # keep what arrived before the cut
                raise _Retry(_describe(exc)) from None
            await writer.flush()
        finally:
            with anyio.CancelScope(shield=True):
                await writer.abandon()  # no block is left in the thread once we leave
        if 0 <= total != sink.size:
            raise _Retry(f"the connection closed after {sink.size} of {total} bytes")

    @contextlib.asynccontextmanager
    async def _open(self, url: str, headers: dict[str, str]) -> AsyncIterator[httpx.Response]:
        """GET the file at ``url``, following one redirect to where its bytes are (a server in redirect
        mode answers 307 with a short-lived presigned link to its object store).

        The link is asked for afresh on every attempt, so an expired one costs a retry, not the job: an
        object store refuses an expired link (403, or 400/401) and that is retried, resuming with Range.
        The link gets no If-Range: its object is immutable and its ETag is the store's, not the sha256
        (a replaced version has another link; the sha256 check at the end catches stale bytes)."""
        async with self._http.stream("GET", url, headers=headers, follow_redirects=False) as first:
            if first.status_code not in _REDIRECTS:
                yield first
                return
            location = first.headers.get("location")
        if not location:
            raise DownloadError(f"cannot download {url}: a redirect without a Location")
        target = urljoin(url, location)
        if urlsplit(target).scheme not in ("http", "https"):
            raise DownloadError(f"cannot download {url}: it redirects to {target[:200]!r}")
        direct = {key: value for key, value in headers.items() if key.lower() != "if-range"}
        async with self._http.stream("GET", target, headers=direct, follow_redirects=False) as response:
            if response.status_code in (400, 401, 403):
                raise _Retry(
                    f"the download link {urlsplit(target).path} was refused (HTTP {response.status_code}):"
                    " it may have expired, so the server is asked for a new one"
                )
            if response.status_code in _REDIRECTS:
                raise DownloadError(f"cannot download {url}: its download link redirects again")
            yield response

    @staticmethod
    def _range_total(url: str, response: httpx.Response, offset: int) -> int:
        match = _CONTENT_RANGE_RE.fullmatch(response.headers.get("content-range", "").strip())
        if match is None or int(match[1]) != offset:
            raise DownloadError(f"cannot download {url}: the server sent the wrong range for bytes={offset}-")
        return -1 if match[3] == "*" else int(match[3])

    async def _get_small(
        self, url: str, params: dict[str, str], headers: dict[str, str]
    ) -> tuple[int, httpx.Headers, bytes]:
        """GET a JSON route, with retries: (status, headers, body of at most 16 MiB)."""

        async def attempt() -> tuple[int, httpx.Headers, bytes]:
            try:
                async with self._http.stream("GET", url, params=params, headers=headers) as response:
                    if response.status_code >= 500:
                        raise _Retry(f"the server answered HTTP {response.status_code}")
                    body = bytearray()
                    async for piece in response.aiter_bytes():
                        body += piece
                        if len(body) > _MAX_JSON:
                            raise TooLargeError(f"{url} sent an answer over {_MAX_JSON} bytes")
                    return response.status_code, response.headers, bytes(body)
            except httpx.HTTPError as exc:
                raise _Retry(_describe(exc)) from None

        return await self._with_retries(f"cannot reach {url}", attempt)

    @staticmethod
    def _json_answer(url: str, status: int, body: bytes, not_found: str) -> dict[str, Any]:
        if status == 404:
            raise NotFoundError(_error_message(body, not_found))
        if status != 200:
            message = _error_message(body, f"the server answered HTTP {status}")
            raise (ValidationError if status == 400 else DownloadError)(f"{url}: {message}")
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise VerificationError(f"{url} answered with something that is not a JSON object")
        return data

    @staticmethod
    def _content(data: object, url: str, package: str, branch: str) -> Content:
        if not isinstance(data, dict):
            raise VerificationError(f"{url} answered without a content.json")
        try:
            content = parse_content(data, f"content.json from {url}")
        except ValidationError as exc:
            raise VerificationError(str(exc)) from None
        if (content.package, content.branch) != (package, branch):
            raise VerificationError(
                f"{url} answered for {content.package} on branch {content.branch}, "
                f"not {package} on branch {branch}"
            )
        return content

    async def _with_retries(self, what: str, attempt: Callable[[], Awaitable[_T]]) -> _T:
        failures = 0
        while True:
            try:
                return await attempt()
            except _Retry as exc:
                failures += 1
                if failures > self.retries:
                    raise DownloadError(f"{what}: {exc} (gave up after {failures} attempts)") from None
            await anyio.sleep(min(self.backoff * 2 ** (failures - 1), _MAX_DELAY))

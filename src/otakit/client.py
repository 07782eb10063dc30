"""A small client for the otakit server's HTTP API (synchronous: the CLI's)."""

from __future__ import annotations

import hashlib
import os
import secrets
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

import otakit
from otakit.content import Content, parse_content
from otakit.errors import (
    AuthError,
    ConflictError,
    NotFoundError,
    OtakitError,
    TooLargeError,
    UnavailableError,
    ValidationError,
    VerificationError,
)
from otakit.filedigest import FileDigest
from otakit.fsutil import write_all

__all__ = ["ServerClient"]

_ERRORS: dict[int, type[OtakitError]] = {
    400: ValidationError,
    401: AuthError,
    404: NotFoundError,
    409: ConflictError,
    413: TooLargeError,
}
# A request that failed with one of these never reached the server: safe to send again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_UNAVAILABLE = frozenset({502, 503, 504})
Progress = Callable[[int], None]  # called with the bytes of the file sent so far
Body = Callable[[], Iterator[bytes]]
_PIECE = 1024 * 1024


def _multipart(
    zip_path: Path, content_text: str, progress: Progress | None, before_last: Callable[[], None]
) -> tuple[dict[str, str], Body]:
    """A multipart/form-data body: ``content`` first, then the file read in 1 MiB pieces (httpx's own
    multipart reads 64 KiB ones, which cost a third more CPU per GiB), with an exact Content-Length.
    ``before_last`` runs before the file's last piece (for an empty file: before the closing boundary)
    goes out; raising there aborts the request, so the server never sees a whole body."""
    boundary = secrets.token_hex(16)
    name = os.path.basename(zip_path).replace('"', "%22").replace("\r", "").replace("\n", "")
    head = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="content"\r\n'
            "Content-Type: application/json\r\n\r\n"
        ).encode()
        + content_text.encode("utf-8")
        + (
            f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/zip\r\n\r\n"
        ).encode()
    )
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = len(head) + os.path.getsize(zip_path) + len(tail)

    def body() -> Iterator[bytes]:
        yield head
        with open(zip_path, "rb") as file:
            sent = 0
            piece = file.read(_PIECE)
            while piece:
                following = file.read(_PIECE)
                if not following:
                    before_last()
                yield piece
                sent += len(piece)
                if progress is not None:
                    progress(sent)
                piece = following
        if sent == 0:
            before_last()
        yield tail

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(length)}
    return headers, body


def _tls_context(base_url: str) -> ssl.SSLContext | bool:
    """httpx's default for https (certifi's CAs); for plain http a context that trusts nothing, as no
    TLS is needed there, and building the default one costs ~30 ms of start-up."""
    if base_url.lower().startswith("https:"):
        return True
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class ServerClient:
    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 60,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.attempts_retried = 0  # requests sent again after a failure, over this client's life
        headers = {"User-Agent": f"otakit/{otakit.__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            verify=_tls_context(self.base_url),
            timeout=httpx.Timeout(timeout, connect=10),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Body | None = None,
        idempotent: bool = True,
        retry_unavailable: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Send with retries (a fresh ``body()`` each time); return the JSON answer or raise OtakitError.

        Connection failures are retried when the request is ``idempotent``, else only when it cannot
        have reached the server (no connection was made). Answers 502, 503 and 504 (the server or the
        stores behind it are down for now) are retried when ``retry_unavailable`` (by default, when
        ``idempotent``): otakit answers 503 only when nothing was changed.
        """
        if retry_unavailable is None:
            retry_unavailable = idempotent
        delay = 0.5
        retried = (httpx.TransportError,) if idempotent else _NOT_SENT
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                if body is not None:
                    kwargs["content"] = body()
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if last or not isinstance(exc, retried):
                    raise UnavailableError(
                        f"cannot reach the server at {self.base_url}: {exc or type(exc).__name__}"
                    ) from None
            else:
                if last or not retry_unavailable or response.status_code not in _UNAVAILABLE:
                    break
                response.close()
            self.attempts_retried += 1
            time.sleep(delay)
            delay *= 2
        return self._answer(response)

    def _answer(self, response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = None
        if 200 <= response.status_code < 300 and isinstance(body, dict):
            return body
        message = body.get("error") if isinstance(body, dict) else None
        message = message or f"the server answered HTTP {response.status_code}"
        if response.status_code >= 500:
            raise UnavailableError(f"server error: {message}")
        raise _ERRORS.get(response.status_code, OtakitError)(message)

    def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One JSON request to the API (the admin routes: pass ``token``); its JSON answer, or the
        status's OtakitError with the server's sentence. Only GETs are retried after the request may
        have gone out, so an action is never applied twice."""
        answer: dict[str, Any] = self._request(
            method, path, params=params, json=json, idempotent=method.upper() in {"GET", "HEAD"}
        )
        return answer

    def latest(self, package: str, branch: str) -> Content:
        body = self._request("GET", "/latestVersion", params={"package": package, "branch": branch})
        return parse_content(body["content.json"], f"content.json from {self.base_url}")

    def versions(
        self, package: str, branch: str | None = None, version: str | None = None
    ) -> list[dict[str, Any]]:
        params = {
            "package": package,
            **({"branch": branch} if branch else {}),
            **({"version": version} if version else {}),
        }
        listed: list[dict[str, Any]] = self._request("GET", "/getVersion", params=params)["list"]
        return listed

    def download(self, content: Content, dest: Path) -> int:
        """Stream ``content``'s zip (``/otafiles/<package>/<branch>/<file>``) into ``dest``, a new file
        (FileExistsError if it exists), hashing it on the way; return its size.

        A file whose sha256 is not the content's raises VerificationError. After any error ``dest`` is
        deleted. Redirects (a server in ``redirect`` mode) are followed; nothing is retried.
        """
        segments = (content.package, content.branch, content.file_name)
        path = "/otafiles/" + "/".join(quote(segment, safe="") for segment in segments)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            try:
                digest, size = hashlib.sha256(), 0
                with self._http.stream("GET", path, follow_redirects=True) as response:
                    if response.status_code != 200:
                        response.read()
                        self._answer(response)
                        raise OtakitError(f"the server answered HTTP {response.status_code} for {path}")
                    for piece in response.iter_bytes(_PIECE):
                        digest.update(piece)
                        write_all(fd, piece)
                        size += len(piece)
            finally:
                os.close(fd)
            if not content.sha256_matches(digest.hexdigest()):
                raise VerificationError(
                    f"{content.file_name} from {self.base_url} does not match its content.json: its sha256"
                    f" is {digest.hexdigest()}, content.json says {content.sha256}"
                )
        except httpx.TransportError as exc:
            dest.unlink(missing_ok=True)
            raise UnavailableError(
                f"cannot download {content.file_name} from {self.base_url}: {exc or type(exc).__name__}"
            ) from None
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        return size

    def upload(
        self,
        zip_path: Path,
        content_text: str,
        *,
        force: bool = False,
        progress: Progress | None = None,
        digest: FileDigest | None = None,
    ) -> None:
        """Stream ``zip_path`` with its content.json (sent first, so a duplicate is refused at once).

        The file's sha256 is checked against the content's by a thread that reads ahead of the upload;
        its last piece waits for that check, so a file that does not match is never sent whole (and
        the server, which hashes too, could not publish it). A mismatch raises VerificationError, also
        when the server refused the upload for another reason first. ``digest``: that check, started
        earlier by the caller (the CLI starts it before it loads httpx).
        """
        content = parse_content(content_text, "content.json")
        if digest is None:
            digest = FileDigest(zip_path)

        def check() -> None:
            actual = digest.result()
            if not content.sha256_matches(actual):
                raise VerificationError(
                    f"{zip_path} does not match its content.json: its sha256 is {actual},"
                    f" content.json says {content.sha256}; nothing was published"
                )

        headers, body = _multipart(zip_path, content_text, progress, check)
        params = {"force": "1"} if force else None
        retried_before = self.attempts_retried
        try:
            self._request("PUT", "/upload", params=params, headers=headers, body=body, retry_unavailable=True)
        except ConflictError:
            # After a retry, a 409 may be our own earlier attempt, committed behind a proxy that lost
            # its answer: the same version with the same sha256 is then published, as asked.
            if self.attempts_retried == retried_before or not self._has(content):
                check()
                raise
        except (OtakitError, OSError):
            check()  # a file that does not match explains any refusal best
            raise
        finally:
            digest.cancel()

    def _has(self, content: Content) -> bool:
        """Whether the server holds ``content``'s version with the same sha256."""
        try:
            listed = self.versions(content.package, content.branch, content.version)
        except OtakitError:
            return False
        return any(
            isinstance(item.get("content"), dict)
            and str(item["content"].get("sha256", "")).lower() == content.sha256.lower()
            for item in listed
        )

"""The client's upload: its own sha256 check runs beside the upload, and a file that does not match its
content.json never reaches the server whole (checked with a server that records the bytes it got);
the server's refusals become otakit errors carrying the server's reason."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from otakit.client import ServerClient
from otakit.errors import (
    AuthError,
    ConflictError,
    TooLargeError,
    UnavailableError,
    ValidationError,
    VerificationError,
)
from otakit.filedigest import FileDigest

MiB = 1024 * 1024


class RecordingServer:
    """Takes one request, keeps every byte of it, and answers 200 only if the body came whole."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.received = b""
        self.length: int | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        connection, _ = self._listener.accept()
        with connection:
            data = b""
            while b"\r\n\r\n" not in data and (piece := connection.recv(65536)):
                data += piece
            head, _, body = data.partition(b"\r\n\r\n")
            fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
            self.length = int(fields[b"Content-Length"])
            while len(body) < self.length and (piece := connection.recv(MiB)):
                body += piece
            self.received = body
            if len(body) == self.length:
                answer = json.dumps({"status": "ok"}).encode()
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    + f"Content-Length: {len(answer)}\r\n\r\n".encode()
                    + answer
                )

    def join(self) -> None:
        self._thread.join(10)
        self._listener.close()


@pytest.fixture
def recorder() -> Iterator[RecordingServer]:
    server = RecordingServer()
    yield server
    server.join()


def _content(sha256: str) -> str:
    return json.dumps({"package": "app", "branch": "main", "version": "1.0", "sha256": sha256})


def _package(tmp_path: Path, size: int) -> tuple[Path, str]:
    path = tmp_path / "app-main-1.0.zip"
    data = hashlib.sha256(b"seed").digest() * (size // 32) + b"z" * (size % 32)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", [3 * MiB + 5, 100, 0])
def test_a_matching_file_goes_whole(recorder: RecordingServer, tmp_path: Path, size: int) -> None:
    path, sha = _package(tmp_path, size)
    with ServerClient(recorder.url, retries=0) as client:
        client.upload(path, _content(sha))
    recorder.join()
    assert len(recorder.received) == recorder.length
    assert path.read_bytes() in recorder.received
    assert recorder.received.endswith(b"--\r\n")


@pytest.mark.parametrize("size", [3 * MiB + 5, 100, 0])
def test_a_file_that_does_not_match_is_never_sent_whole(
    recorder: RecordingServer, tmp_path: Path, size: int
) -> None:
    path, _ = _package(tmp_path, size)
    wrong = hashlib.sha256(b"something else").hexdigest()
    with ServerClient(recorder.url, retries=0) as client, pytest.raises(VerificationError) as raised:
        client.upload(path, _content(wrong))
    assert "does not match its content.json" in str(raised.value)
    assert wrong in str(raised.value)
    recorder.join()
    assert recorder.length is not None
    assert len(recorder.received) < recorder.length
    # Neither the file's last piece nor the closing boundary went out.
    last_piece = (size - 1) % MiB + 1 if size else 0
    closing = len(f"\r\n--{'0' * 32}--\r\n")
    assert len(recorder.received) <= recorder.length - last_piece - closing


def test_file_digest(tmp_path: Path) -> None:
    path, sha = _package(tmp_path, 5 * MiB + 3)
    assert FileDigest(path).result() == sha
    with pytest.raises(FileNotFoundError):
        FileDigest(tmp_path / "missing.zip").result()


@pytest.mark.parametrize(
    ("status", "body", "error", "message"),
    [
        (
            400,
            {"status": 400, "error": "invalid content.json: version"},
            ValidationError,
            "invalid content.json",
        ),
        (401, {"status": 401, "error": "a publisher token is required"}, AuthError, "token is required"),
        (409, {"status": 409, "error": "app 1.0 exists"}, ConflictError, "app 1.0 exists"),
        (413, {"status": 413, "error": "over the limit"}, TooLargeError, "over the limit"),
        (503, {"status": 503, "error": "database unavailable"}, UnavailableError, "database unavailable"),
        (502, None, UnavailableError, "HTTP 502"),
    ],
)
def test_server_answers_become_our_errors(
    tmp_path: Path, status: int, body: object, error: type[Exception], message: str
) -> None:
    """The server's reason reaches the user; a matching file is not blamed for the refusal."""
    path, sha = _package(tmp_path, 1000)

    def answer(request: httpx.Request) -> httpx.Response:
        request.read()
        if body is None:
            return httpx.Response(status, text="<html>bad gateway</html>")
        return httpx.Response(status, json=body)

    transport = httpx.MockTransport(answer)
    with (
        ServerClient("http://ota.test", retries=0, transport=transport) as client,
        pytest.raises(error, match=message),
    ):
        client.upload(path, _content(sha))


def test_an_invalid_latest_answer_names_the_server() -> None:
    content = {"package": "app", "branch": "major", "version": "latest", "sha256": "a" * 64}
    transport = httpx.MockTransport(
        lambda request: httpx.Response(200, json={"status": 200, "content.json": content})
    )
    with (
        ServerClient("http://ota.test", retries=0, transport=transport) as client,
        pytest.raises(ValidationError) as refused,
    ):
        client.latest("app", "major")
    assert str(refused.value) == (
        "invalid content.json from http://ota.test: invalid version 'latest': not a PEP 440 version"
    )


def _retrying_server(statuses: list[int], stored_sha: str | None) -> tuple[httpx.MockTransport, list[str]]:
    """Answers the uploads with ``statuses`` in turn; /getVersion lists a version of ``stored_sha``."""
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(f"{request.method} {request.url.path}")
        if request.url.path == "/getVersion":
            item = {"name": "app", "branch": "major", "version": "1.0", "content": {"sha256": stored_sha}}
            return httpx.Response(200, json={"status": 200, "list": [item]})
        status = statuses.pop(0)
        return httpx.Response(status, json={"status": status, "error": f"answer {status}"})

    return httpx.MockTransport(answer), seen


def test_an_upload_answered_503_is_sent_again(tmp_path: Path) -> None:
    path, sha = _package(tmp_path, 1000)
    transport, seen = _retrying_server([503, 502, 200], None)
    with ServerClient("http://ota.test", retries=3, transport=transport) as client:
        client.upload(path, _content(sha))
        assert client.attempts_retried == 2
    assert seen == ["PUT /upload"] * 3


def test_a_409_after_a_retry_is_our_own_earlier_upload_when_the_sha256_matches(tmp_path: Path) -> None:
    path, sha = _package(tmp_path, 1000)
    transport, seen = _retrying_server([503, 409], sha)
    with ServerClient("http://ota.test", retries=3, transport=transport) as client:
        client.upload(path, _content(sha))
    assert seen == ["PUT /upload", "PUT /upload", "GET /getVersion"]

    transport, _ = _retrying_server([503, 409], "f" * 64)  # another file under that version
    with (
        ServerClient("http://ota.test", retries=3, transport=transport) as client,
        pytest.raises(ConflictError, match="answer 409"),
    ):
        client.upload(path, _content(sha))


def test_a_409_without_a_retry_stays_a_conflict(tmp_path: Path) -> None:
    path, sha = _package(tmp_path, 1000)
    transport, seen = _retrying_server([409], sha)
    with (
        ServerClient("http://ota.test", retries=3, transport=transport) as client,
        pytest.raises(ConflictError),
    ):
        client.upload(path, _content(sha))
    assert seen == ["PUT /upload"]

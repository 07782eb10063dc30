"""The daemon's fetcher against a real otakit server and against a server that cuts, lies and fails."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from otakit.content import Content, parse_content
from otakit.daemon.fetch import Fetcher
from otakit.errors import DownloadError, NotFoundError, TooLargeError, ValidationError, VerificationError
from tests.api_client import upload
from tests.cutting_server import CuttingServer
from tests.samples import content_for, make_zip
from tests.servers import RunningServer, free_port

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
DATA = os.urandom(2_500_000)  # the cutting server's file


class Recorder(httpx.AsyncBaseTransport):
    """A real transport that notes each request's Range header and the answer's status."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.seen: list[tuple[str | None, int]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        self.seen.append((request.headers.get("range"), response.status_code))
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def publish(sqlite_server: RunningServer, package: str, version: str, data: bytes | None = None) -> bytes:
    data = data if data is not None else make_zip({"v.txt": version.encode()})
    response = upload(
        sqlite_server, content_for(data, package, version, remote=sqlite_server.url + "/"), data
    )
    assert response.status_code == 200, response.text
    return data


def content(data: bytes, remote: str, package: str = "app", version: str = "1.0.0") -> Content:
    return parse_content(content_for(data, package, version, remote=remote))


def fetcher(**kwargs: Any) -> Fetcher:
    return Fetcher(**{"retries": 3, "backoff": 0.01, "timeout": 5.0, **kwargs})


# --- against a real otakit server ---


async def test_latest_answers_not_modified_until_a_new_upload(sqlite_server: RunningServer, pkg: str) -> None:
    publish(sqlite_server, pkg, "1.0.0")
    async with fetcher() as fetch:
        latest, etag = await fetch.latest(sqlite_server.url, pkg, "major")
        assert latest is not None
        assert (latest.package, latest.version, latest.remote) == (pkg, "1.0.0", sqlite_server.url + "/")
        assert etag
        assert await fetch.latest(sqlite_server.url, pkg, "major", etag) == (None, etag)
        publish(sqlite_server, pkg, "1.1.0")
        newer, new_etag = await fetch.latest(sqlite_server.url + "/", pkg, "major", etag)
        assert newer is not None
        assert newer.version == "1.1.0"
        assert new_etag not in (None, etag)


async def test_unknown_package_is_not_found_and_has_no_versions(
    sqlite_server: RunningServer, pkg: str
) -> None:
    async with fetcher() as fetch:
        with pytest.raises(NotFoundError, match=pkg):
            await fetch.latest(sqlite_server.url, pkg, "major")
        assert await fetch.versions(sqlite_server.url, pkg, "major") == []


async def test_versions_highest_first(sqlite_server: RunningServer, pkg: str) -> None:
    for version in ("0.0.9", "1.0.0", "0.0.10"):
        publish(sqlite_server, pkg, version)
    publish(sqlite_server, pkg, "9.0.0")
    async with fetcher() as fetch:
        listed = await fetch.versions(sqlite_server.url + "/", pkg, "major")
    assert [c.version for c in listed] == ["9.0.0", "1.0.0", "0.0.10", "0.0.9"]
    assert all(isinstance(c, Content) and c.package == pkg for c in listed)


@pytest.mark.parametrize("slash", ["", "/"])
async def test_download_writes_the_file(
    sqlite_server: RunningServer, pkg: str, tmp_path: Path, slash: str
) -> None:
    data = publish(sqlite_server, pkg, "1.0.0+build.1")
    calls: list[tuple[int, int | None]] = []
    async with fetcher() as fetch:
        latest, _ = await fetch.latest(sqlite_server.url, pkg, "major")
        assert latest is not None
        dest = tmp_path / "staging" / "pkg.zip"
        await fetch.download(latest, dest, lambda *call: calls.append(call), remote=sqlite_server.url + slash)
    assert dest.read_bytes() == data
    assert calls[-1] == (len(data), len(data))


async def test_download_resumes_a_partial_file(
    sqlite_server: RunningServer, pkg: str, tmp_path: Path
) -> None:
    data = publish(sqlite_server, pkg, "1.0.0", make_zip({"big.bin": os.urandom(3 * MiB)}))
    dest = tmp_path / "pkg.zip"
    dest.write_bytes(data[:MiB])
    calls: list[tuple[int, int | None]] = []
    recorder = Recorder()
    async with fetcher(transport=recorder) as fetch:
        latest, _ = await fetch.latest(sqlite_server.url, pkg, "major")
        assert latest is not None
        await fetch.download(latest, dest, lambda *call: calls.append(call))
    assert dest.read_bytes() == data
    assert recorder.seen[1:] == [(f"bytes={MiB}-", 206)]
    assert calls[0][0] >= 2 * MiB  # the first chunk (1 MiB or a little more) came on top of the 1 MiB on disk
    assert calls[-1] == (len(data), len(data))


async def test_a_complete_file_on_disk_is_verified_not_fetched(
    sqlite_server: RunningServer, pkg: str, tmp_path: Path
) -> None:
    data = publish(sqlite_server, pkg, "1.0.0")
    dest = tmp_path / "pkg.zip"
    dest.write_bytes(data)
    recorder = Recorder()
    async with fetcher(transport=recorder) as fetch:
        await fetch.download(content(data, sqlite_server.url, pkg), dest)
    assert recorder.seen == [(f"bytes={len(data)}-", 416)]
    assert dest.read_bytes() == data


async def test_a_missing_file_is_not_found(sqlite_server: RunningServer, pkg: str, tmp_path: Path) -> None:
    async with fetcher() as fetch:
        with pytest.raises(NotFoundError):
            await fetch.download(content(b"never uploaded", sqlite_server.url, pkg), tmp_path / "pkg.zip")


async def test_an_unreachable_server_gives_up_after_the_retries(tmp_path: Path) -> None:
    remote = f"http://127.0.0.1:{free_port()}/"
    async with fetcher(retries=2) as fetch:
        with pytest.raises(DownloadError, match="gave up after 3 attempts"):
            await fetch.latest(remote, "app", "major")
        with pytest.raises(DownloadError, match="gave up after 3 attempts") as caught:
            await fetch.download(content(DATA, remote), tmp_path / "pkg.zip")
    assert "\n" not in str(caught.value)
    assert "ConnectError" in str(caught.value)


async def test_a_remote_that_is_not_a_url_is_refused(tmp_path: Path) -> None:
    async with fetcher() as fetch:
        for remote in ("", "ftp://example.org/", "localhost:5000"):
            with pytest.raises(ValidationError, match="invalid remote"):
                await fetch.latest(remote, "app", "major")


# --- against a server that cuts, lies and fails ---


@pytest.mark.parametrize("stall", [False, True], ids=["closed", "stalled"])
async def test_cut_connections_resume_where_they_stopped(tmp_path: Path, stall: bool) -> None:
    dest = tmp_path / "pkg.zip"
    with CuttingServer(DATA, cut_after=700_000, cuts=2, stall=stall) as server:
        async with fetcher(timeout=0.3) as fetch:
            await fetch.download(content(DATA, server.url), dest)
    assert dest.read_bytes() == DATA
    assert server.ranges == [None, "bytes=700000-", "bytes=1400000-"]
    assert {seen.if_range for seen in server.seen[1:]} == {server.etag}
    assert [seen.status for seen in server.seen] == [200, 206, 206]


async def test_when_the_retries_run_out_the_bytes_stay_for_the_next_call(tmp_path: Path) -> None:
    dest = tmp_path / "pkg.zip"
    with CuttingServer(DATA, cut_after=500_000, cuts=3) as server:
        async with fetcher(retries=1) as fetch:
            with pytest.raises(DownloadError, match="RemoteProtocolError"):
                await fetch.download(content(DATA, server.url), dest)
            assert dest.read_bytes() == DATA[:1_000_000]
            await fetch.download(content(DATA, server.url), dest)
    assert dest.read_bytes() == DATA
    assert server.ranges == [None, "bytes=500000-", "bytes=1000000-", "bytes=1500000-"]


async def test_wrong_bytes_are_deleted(tmp_path: Path) -> None:
    dest = tmp_path / "pkg.zip"
    with CuttingServer(DATA, wrong_bytes=True) as server:
        async with fetcher() as fetch:
            with pytest.raises(VerificationError, match="sha256"):
                await fetch.download(content(DATA, server.url), dest)
    assert not dest.exists()
    assert len(server.seen) == 1


async def test_a_stale_partial_file_is_fetched_again_once(tmp_path: Path) -> None:
    dest = tmp_path / "pkg.zip"
    dest.write_bytes(b"not the start of this file" * 100)
    with CuttingServer(DATA) as server:
        async with fetcher() as fetch:
            await fetch.download(content(DATA, server.url), dest)
    assert dest.read_bytes() == DATA
    assert server.ranges == ["bytes=2600-", None]


async def test_a_complete_but_wrong_file_on_disk_is_fetched_again(tmp_path: Path) -> None:
    dest = tmp_path / "pkg.zip"
    dest.write_bytes(bytes(len(DATA)))
    with CuttingServer(DATA) as server:
        async with fetcher() as fetch:
            await fetch.download(content(DATA, server.url), dest)
    assert dest.read_bytes() == DATA
    assert [(seen.range, seen.status) for seen in server.seen] == [(f"bytes={len(DATA)}-", 416), (None, 200)]


@pytest.mark.parametrize(
    ("options", "partial"),
    [
        ({"announce": 3 * MiB}, 0),  # Content-Length over the limit
        ({"announce": 3 * MiB}, 1000),  # Content-Range total over the limit
        ({"no_length": True}, 0),  # no length announced, too many bytes arrive
    ],
    ids=["content-length", "content-range", "counted"],
)
async def test_over_the_size_limit(tmp_path: Path, options: dict[str, Any], partial: int) -> None:
    dest = tmp_path / "pkg.zip"
    if partial:
        dest.write_bytes(DATA[:partial])
    with CuttingServer(DATA, **options) as server:
        async with fetcher(max_bytes=2 * MiB) as fetch:
            with pytest.raises(TooLargeError, match="limit"):
                await fetch.download(content(DATA, server.url), dest)
    assert not dest.exists()


async def test_server_errors_are_retried(tmp_path: Path) -> None:
    dest = tmp_path / "pkg.zip"
    with CuttingServer(DATA, errors=2) as server:
        async with fetcher() as fetch:
            await fetch.download(content(DATA, server.url), dest)
    assert dest.read_bytes() == DATA
    assert [seen.status for seen in server.seen] == [500, 500, 200]
    with CuttingServer(DATA, errors=10) as server:
        async with fetcher(retries=2) as fetch:
            with pytest.raises(DownloadError, match="HTTP 500"):
                await fetch.download(content(DATA, server.url), dest)
            with pytest.raises(DownloadError, match="HTTP 500"):
                await fetch.versions(server.url, "app", "major")


async def test_a_200_answer_to_a_range_request_starts_over(tmp_path: Path) -> None:
    dest = tmp_path / "pkg.zip"
    dest.write_bytes(DATA[:500_000])
    calls: list[tuple[int, int | None]] = []
    with CuttingServer(DATA, ignore_range=1) as server:
        async with fetcher() as fetch:
            await fetch.download(content(DATA, server.url), dest, lambda *call: calls.append(call))
    assert dest.read_bytes() == DATA
    assert [(seen.range, seen.status) for seen in server.seen] == [("bytes=500000-", 200)]
    assert MiB <= calls[0][0] < 2 * MiB  # counted from zero
    assert calls[0][1] == len(DATA)


def _answer(**fields: Any) -> bytes:
    return json.dumps({"status": 200, **fields}).encode()


@pytest.mark.parametrize(
    "changes",
    [{"package": "../x"}, {"sha256": "abc"}, {"version": "not a version"}, {"package": "other"}],
    ids=["package-path", "sha256", "version", "other-package"],
)
async def test_an_invalid_content_json_is_refused(changes: dict[str, str]) -> None:
    bad = {**content_for(DATA, "app", "1.0.0"), **changes}
    routes = {
        "/latestVersion": _answer(**{"content.json": bad}),
        "/getVersion": _answer(list=[{"name": "app", "branch": "major", "version": "1.0.0", "content": bad}]),
    }
    with CuttingServer(DATA, routes=routes) as server:
        async with fetcher() as fetch:
            with pytest.raises(VerificationError):
                await fetch.latest(server.url, "app", "major")
            with pytest.raises(VerificationError):
                await fetch.versions(server.url, "app", "major")


async def test_an_answer_that_is_not_json_is_refused() -> None:
    with CuttingServer(DATA, routes={"/latestVersion": b"<html>", "/getVersion": _answer()}) as server:
        async with fetcher() as fetch:
            with pytest.raises(VerificationError):
                await fetch.latest(server.url, "app", "major")
            with pytest.raises(VerificationError):
                await fetch.versions(server.url, "app", "major")


# --- a server in redirect mode: 307 to a short-lived link of its object store ---


async def test_a_redirect_is_followed_to_the_object_store(tmp_path: Path) -> None:
    dest = tmp_path / "pkg.zip"
    with CuttingServer(DATA, redirect_ttl=60) as server:
        async with fetcher() as fetch:
            await fetch.download(content(DATA, server.url), dest)
    assert dest.read_bytes() == DATA
    assert [(seen.path.split("/")[1], seen.status) for seen in server.seen] == [
        ("otafiles", 307),
        ("signed", 200),
    ]


async def test_a_link_cut_and_expired_is_asked_for_again_and_resumed(tmp_path: Path) -> None:
    """The link is good for 0.2 s; the transfer is cut twice, each time after the link expired: each
    retry asks the server for a new link and resumes where the bytes stopped."""
    dest = tmp_path / "pkg.zip"
    with CuttingServer(DATA, redirect_ttl=0.2, cut_after=700_000, cuts=2, stall=True) as server:
        async with fetcher(timeout=0.4, backoff=0.05) as fetch:
            await fetch.download(content(DATA, server.url), dest)
    assert dest.read_bytes() == DATA
    files = [seen for seen in server.seen if seen.path.startswith("/signed/")]
    assert [seen.range for seen in files] == [None, "bytes=700000-", "bytes=1400000-"]
    assert {seen.if_range for seen in files} == {None}  # the store's ETag is not the sha256
    assert [seen.path for seen in server.seen].count("/otafiles/app/major/app-major-1.0.0.zip") == 3


async def test_an_expired_link_is_retried_with_a_fresh_one(tmp_path: Path) -> None:
    dest = tmp_path / "pkg.zip"
    dest.write_bytes(DATA[:1_000_000])  # an earlier call's bytes
    with CuttingServer(DATA, redirect_ttl=-1) as server:  # every link it hands out has expired
        async with fetcher(retries=2) as fetch:
            with pytest.raises(DownloadError, match=r"was refused \(HTTP 403\): it may have expired"):
                await fetch.download(content(DATA, server.url), dest)
    assert dest.read_bytes() == DATA[:1_000_000]  # kept, to resume next time
    assert [seen.status for seen in server.seen] == [307, 403] * 3

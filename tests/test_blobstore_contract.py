"""The blob store contract, for every driver (``STORE_KINDS``): a local folder, and a real SeaweedFS S3
server. What one driver honestly cannot do is checked as its own behaviour inside the test (a local
store has no download URLs; its crashes are killed processes); local-only tests are at the end.

Range semantics (as HTTP): ``end`` past the last byte is cut to it; ``start`` at or past the end raises
``RangeNotSatisfiableError`` (which carries the size, for a 416's ``Content-Range: bytes */size``); an
empty object read whole yields nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from otakit.errors import TooLargeError, UnavailableError, ValidationError
from otakit.server.blobstore import (
    BlobStore,
    LocalBlobStore,
    RangeNotSatisfiableError,
    S3BlobStore,
    s3_store_from_url,
)
from otakit.server.blobstore import s3 as s3_module
from otakit.server.blobstore.s3 import MIN_PART_SIZE
from tests.s3_server import S3Server, run_weed
from tests.servers import free_port

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
PART = MIN_PART_SIZE  # the stores under test use S3's smallest part, so that few bytes make many parts
STORE_KINDS = ["local", "s3"]

StoreFactory = Callable[[], BlobStore]


@pytest.fixture(params=STORE_KINDS)
async def new_store(request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    """Opens stores on one fresh, empty place: each call is another process sharing it."""
    opened: list[BlobStore] = []
    place = f"test-{secrets.token_hex(6)}"
    if request.param == "s3":
        server: S3Server = request.getfixturevalue("s3_server")

        def factory() -> BlobStore:
            store = S3BlobStore(server.bucket, f"runs/{place}", part_size=PART, **server.settings())
            opened.append(store)
            return store

    elif request.param == "local":
        root: Path = request.getfixturevalue("tmp_path") / place
        root.mkdir()

        def factory() -> BlobStore:
            store = LocalBlobStore(root)
            opened.append(store)
            return store

    else:  # pragma: no cover
        raise AssertionError(request.param)
    try:
        yield factory
    finally:
        for store in opened:
            await store.close()


@pytest.fixture
def store(new_store: StoreFactory) -> BlobStore:
    return new_store()


def oid() -> str:
    return secrets.token_hex(16)


async def put(store: BlobStore, object_id: str, data: bytes, block: int = 4 * MiB) -> None:
    incoming = await store.begin(object_id)
    for at in range(0, len(data), block):
        await incoming.write(data[at : at + block])
    await incoming.complete()


async def read(store: BlobStore, object_id: str, start: int = 0, end: int | None = None) -> bytes:
    reader = await store.open_range(object_id, start, end)
    return await reader.read_all()


async def ids(store: BlobStore) -> set[str]:
    return {object_id async for object_id in store.object_ids()}


# A process with local uploads in flight: it begins and writes each ``object_id=size``, says "ready",
# then waits (holding them, as a live server does) until it is killed.
_UPLOADER = """
import asyncio, os, sys
from otakit.server.blobstore import LocalBlobStore

async def main():
    store = LocalBlobStore(sys.argv[1])
    uploads = []
    for spec in sys.argv[2:]:
        object_id, size = spec.split("=")
        incoming = await store.begin(object_id)
        await incoming.write(os.urandom(int(size)))
        uploads.append(incoming)
    print("ready", flush=True)
    sys.stdin.read()

asyncio.run(main())
"""


@contextlib.contextmanager
def uploader(root: Path, uploads: dict[str, int]) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``uploads`` in flight in the local store at ``root``; SIGKILLed at the end."""
    specs = [f"{object_id}={size}" for object_id, size in uploads.items()]
    process = subprocess.Popen(
        [sys.executable, "-c", _UPLOADER, str(root), *specs],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
        yield process
    finally:
        kill(process)


def kill(process: subprocess.Popen[str]) -> None:
    """Die as a crash does: no complete, no abort, no cleanup; the kernel drops its fds and flocks."""
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    if process.stdin is not None:
        process.stdin.close()
    if process.stdout is not None:
        process.stdout.close()


def killed_uploads(root: Path, uploads: dict[str, int]) -> None:
    with uploader(root, uploads) as process:
        kill(process)


# --- round trips ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "block"),
    [
        pytest.param(0, 1, id="empty"),
        pytest.param(1, 1, id="one-byte"),
        pytest.param(PART - 1, 1 * MiB, id="just-under-a-part"),
        pytest.param(PART, 4 * MiB, id="exactly-one-part"),
        pytest.param(PART + 1, 4 * MiB, id="one-part-and-a-byte"),
        pytest.param(20 * MiB, 3 * MiB + 7, id="many-parts-odd-blocks"),
        pytest.param(3 * PART, PART, id="whole-parts-in-part-blocks"),
        pytest.param(2 * PART + 3, 11 * MiB, id="blocks-larger-than-a-part"),
    ],
)
async def test_round_trip_is_byte_identical(store: BlobStore, size: int, block: int) -> None:
    data = os.urandom(size)
    object_id = oid()
    await put(store, object_id, data, block)
    assert await store.size(object_id) == size
    assert await read(store, object_id) == data
    assert object_id in await ids(store)
    assert await store.unfinished() == []


async def test_write_takes_any_bytes_like(store: BlobStore) -> None:
    object_id = oid()
    incoming = await store.begin(object_id)
    await incoming.write(b"ab")
    await incoming.write(bytearray(b"cd"))
    await incoming.write(memoryview(b"xxefxx")[2:4])
    assert incoming.size == 6
    await incoming.complete()
    assert await read(store, object_id) == b"abcdef"


async def test_readers_stream_in_chunks(store: BlobStore) -> None:
    data = os.urandom(3 * MiB)
    object_id = oid()
    await put(store, object_id, data)
    reader = await store.open_range(object_id)
    chunks = [chunk async for chunk in reader]
    assert len(chunks) > 1
    assert max(map(len, chunks)) <= MiB
    assert b"".join(chunks) == data
    await reader.aclose()  # after the end: harmless


# --- ranges ----------------------------------------------------------------------------------------
async def test_ranges_slice_like_http(store: BlobStore) -> None:
    data = os.urandom(1000)
    object_id = oid()
    await put(store, object_id, data)
    assert await read(store, object_id, 10) == data[10:]
    assert await read(store, object_id, 10, 19) == data[10:20]
    assert await read(store, object_id, 999) == data[999:]
    assert await read(store, object_id, 999, 999) == data[999:]
    assert await read(store, object_id, 0, 0) == data[:1]
    assert await read(store, object_id, 990, 5000) == data[990:]  # an end past the last byte is cut
    reader = await store.open_range(object_id, 990, 5000)
    assert (reader.range.start, reader.range.end, reader.range.total, reader.range.length) == (
        990,
        999,
        1000,
        10,
    )
    await reader.aclose()
    whole = await store.open_range(object_id)
    assert (whole.range.start, whole.range.end, whole.range.total) == (0, 999, 1000)
    await whole.aclose()


@pytest.mark.parametrize("start", [1000, 1001, 10**9])
async def test_a_range_past_the_end_is_not_satisfiable(store: BlobStore, start: int) -> None:
    object_id = oid()
    await put(store, object_id, os.urandom(1000))
    with pytest.raises(RangeNotSatisfiableError) as caught:
        await store.open_range(object_id, start)
    assert caught.value.total == 1000
    assert caught.value.start == start


async def test_an_empty_object_reads_whole_but_has_no_range(store: BlobStore) -> None:
    object_id = oid()
    await put(store, object_id, b"")
    reader = await store.open_range(object_id)
    assert reader.range.length == 0
    assert await reader.read_all() == b""
    with pytest.raises(RangeNotSatisfiableError) as caught:
        await store.open_range(object_id, 0, 0)
    assert caught.value.total == 0


async def test_bad_ranges_and_ids_are_the_callers_bug(store: BlobStore) -> None:
    with pytest.raises(ValueError, match="range"):
        await store.open_range(oid(), -1)
    with pytest.raises(ValueError, match="range"):
        await store.open_range(oid(), 5, 4)
    for bad in ["", "a/b", "../x", "x y", ".hidden"]:
        with pytest.raises(ValueError, match="object id"):
            await store.begin(bad)
        with pytest.raises(ValueError, match="object id"):
            await store.size(bad)


async def test_a_reader_closed_early_releases_its_connection(store: BlobStore) -> None:
    object_id = oid()
    await put(store, object_id, os.urandom(2 * MiB))
    for _ in range(30):  # more than the pool holds: a leaked connection would block
        reader = await store.open_range(object_id)
        await reader.__anext__()
        await reader.aclose()
    unread = await store.open_range(object_id, 5)
    await unread.aclose()
    assert await read(store, object_id, 0, 3) != b""


# --- visibility, abort, crashes ------------------------------------------------------------------
async def test_missing_objects(store: BlobStore) -> None:
    object_id = oid()
    with pytest.raises(FileNotFoundError):
        await store.open_range(object_id)
    with pytest.raises(FileNotFoundError):
        await store.open_range(object_id, 3, 5)
    with pytest.raises(FileNotFoundError):
        await store.size(object_id)
    await store.delete(object_id)  # missing is fine


async def test_delete_removes_an_object(store: BlobStore) -> None:
    keep, gone = oid(), oid()
    await put(store, keep, b"keep")
    await put(store, gone, b"gone")
    assert await ids(store) == {keep, gone}
    await store.delete(gone)
    await store.delete(gone)
    assert await ids(store) == {keep}
    with pytest.raises(FileNotFoundError):
        await store.size(gone)


async def test_an_object_is_invisible_until_complete(store: BlobStore) -> None:
    object_id = oid()
    incoming = await store.begin(object_id)
    await incoming.write(os.urandom(PART + MiB))  # one part sent, one buffered
    assert object_id not in await ids(store)
    with pytest.raises(FileNotFoundError):
        await store.open_range(object_id)
    with pytest.raises(FileNotFoundError):
        await store.size(object_id)
    await incoming.complete()
    assert await store.size(object_id) == PART + MiB
    assert object_id in await ids(store)
    with pytest.raises(RuntimeError):
        await incoming.write(b"more")
    with pytest.raises(RuntimeError):
        await incoming.abort()


@pytest.mark.parametrize(
    "size", [0, 10, PART + 10, 3 * PART], ids=["nothing", "small", "parts", "whole-parts"]
)
async def test_abort_leaves_nothing(store: BlobStore, size: int) -> None:
    object_id = oid()
    incoming = await store.begin(object_id)
    if size:
        await incoming.write(os.urandom(size))
    await incoming.abort()
    await incoming.abort()  # twice is fine
    assert await ids(store) == set()
    assert await store.unfinished() == []
    with pytest.raises(FileNotFoundError):
        await store.size(object_id)
    with pytest.raises(RuntimeError):
        await incoming.write(b"x")
    with pytest.raises(RuntimeError):
        await incoming.complete()


async def test_an_abandoned_upload_is_unfinished_until_swept(new_store: StoreFactory) -> None:
    survivor = new_store()
    big, small, done = oid(), oid(), oid()
    await put(survivor, done, b"done")
    if isinstance(survivor, LocalBlobStore):  # a process is killed with both uploads written to disk
        await anyio.to_thread.run_sync(killed_uploads, survivor.root, {big: 2 * PART + 100, small: 14})
        assert sorted(await survivor.unfinished()) == sorted([big, small])  # every block went to disk
    else:
        crashed = new_store()
        incoming = await crashed.begin(big)
        await incoming.write(os.urandom(2 * PART + 100))  # two parts sent
        tiny = await crashed.begin(small)
        await tiny.write(b"only in memory")
        await crashed.close()  # the process dies: no complete, no abort
        assert await survivor.unfinished() == [big]  # what never left memory left nothing

    assert await ids(survivor) == {done}
    with pytest.raises(FileNotFoundError):
        await survivor.open_range(big)
    await survivor.abort_unfinished(big)
    await survivor.abort_unfinished(big)  # nothing left: fine
    await survivor.abort_unfinished(small)
    await survivor.abort_unfinished(oid())
    assert await survivor.unfinished() == []
    assert await ids(survivor) == {done}


async def test_two_uploads_in_flight_do_not_mix(store: BlobStore) -> None:
    a, b = oid(), oid()
    data_a, data_b = os.urandom(2 * PART + 5), os.urandom(PART + 9)
    up_a, up_b = await store.begin(a), await store.begin(b)
    for at in range(0, max(len(data_a), len(data_b)), MiB):
        if at < len(data_a):
            await up_a.write(data_a[at : at + MiB])
        if at < len(data_b):
            await up_b.write(data_b[at : at + MiB])
    if isinstance(store, LocalBlobStore):  # it tells live uploads (flock-held) from dead ones' leftovers
        assert await store.unfinished() == []
    else:
        assert sorted(await store.unfinished()) == sorted([a, b])
    await up_b.complete()
    await up_a.complete()
    assert await read(store, a) == data_a
    assert await read(store, b) == data_b
    assert await store.unfinished() == []


# --- download URLs -------------------------------------------------------------------------------
async def test_download_urls_serve_bytes_and_ranges(store: BlobStore) -> None:
    data = os.urandom(PART + 1234)
    object_id = oid()
    await put(store, object_id, data)
    url = await store.download_url(object_id, expires_s=60, filename="pkg-main-1.0.zip")
    if isinstance(store, LocalBlobStore):  # the server streams local objects itself
        assert url is None
        return
    assert url is not None
    async with httpx.AsyncClient(timeout=30) as client:
        whole = await client.get(url)
        assert whole.status_code == 200
        assert whole.content == data
        assert whole.headers["content-disposition"] == 'attachment; filename="pkg-main-1.0.zip"'
        part = await client.get(url, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206
        assert part.content == data[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
        tail = await client.get(url, headers={"Range": f"bytes={len(data) - 10}-"})
        assert (tail.status_code, tail.content) == (206, data[-10:])
        unsigned = await client.get(url.split("?")[0])
        assert unsigned.status_code == 403  # the bucket is not public: the signature is what opens it


async def test_download_urls_name_files_beyond_ascii(store: BlobStore) -> None:
    object_id = oid()
    await put(store, object_id, b"bytes")
    url = await store.download_url(object_id, expires_s=60, filename='paquet "été".zip')
    if isinstance(store, LocalBlobStore):  # the server streams local objects itself
        assert url is None
        return
    assert url is not None
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.get(url)
    assert answer.content == b"bytes"
    disposition = answer.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="paquet _')
    assert "filename*=UTF-8''paquet%20%22%C3%A9t%C3%A9%22.zip" in disposition


async def test_download_urls_expire(store: BlobStore) -> None:
    object_id = oid()
    await put(store, object_id, b"soon gone")
    url = await store.download_url(object_id, expires_s=1)
    if isinstance(store, LocalBlobStore):  # the server streams local objects itself
        assert url is None
        return
    assert url is not None
    async with httpx.AsyncClient(timeout=30) as client:
        assert (await client.get(url)).content == b"soon gone"
        await asyncio.sleep(2.2)
        expired = await client.get(url)
    assert expired.status_code == 403
    assert "expired" in expired.text.lower()


async def test_download_urls_are_signed_for_the_public_endpoint(s3_server: S3Server) -> None:
    public = f"http://localhost:{s3_server.ports['s3']}"
    store = S3BlobStore(s3_server.bucket, "public-test", **s3_server.settings(public_endpoint=public))
    try:
        object_id = oid()
        await put(store, object_id, b"via the public name")
        url = await store.download_url(object_id, expires_s=60)
        assert url is not None
        assert url.startswith(f"{public}/{s3_server.bucket}/public-test/objects/{object_id}?")
        async with httpx.AsyncClient(timeout=30) as client:
            answer = await client.get(url)
        assert (answer.status_code, answer.content) == (200, b"via the public name")
        await store.delete(object_id)
    finally:
        await store.close()


# --- outages -------------------------------------------------------------------------------------
async def test_a_stopped_server_is_unavailable(tmp_path: Path) -> None:
    with run_weed(tmp_path / "weed") as server:
        store = S3BlobStore(server.bucket, "p", part_size=PART, **server.settings(max_attempts=2))
        try:
            await store.ping()
            kept = oid()
            await put(store, kept, b"kept")
            incoming = await store.begin(oid())
            await incoming.write(os.urandom(PART + 1))
            server.stop()

            started = time.monotonic()
            with pytest.raises(UnavailableError, match="cannot be reached"):
                await store.ping()
            assert time.monotonic() - started < 10
            with pytest.raises(UnavailableError, match="cannot be reached"):
                await incoming.write(os.urandom(PART))
            with pytest.raises(UnavailableError):
                await incoming.abort()
            small = await store.begin(oid())
            await small.write(b"x")
            with pytest.raises(UnavailableError):
                await small.complete()
            late = await store.begin(oid())
            with pytest.raises(UnavailableError):
                await late.write(os.urandom(PART))
            await every_read_is_unavailable(store, kept)
            assert await store.download_url(kept, expires_s=60) is not None  # signing needs no server
        finally:
            await store.close()


async def every_read_is_unavailable(store: BlobStore, kept: str) -> None:
    """Reading an object, its size or a listing: each an UnavailableError from a store that is gone."""
    with pytest.raises(UnavailableError):
        await store.open_range(kept)
    with pytest.raises(UnavailableError):
        await store.size(kept)
    with pytest.raises(UnavailableError):
        await store.unfinished()
    with pytest.raises(UnavailableError):
        [object_id async for object_id in store.object_ids()]


@pytest.mark.parametrize("how", ["removed", "unwritable"])
async def test_a_missing_or_unwritable_folder_is_unavailable(tmp_path: Path, how: str) -> None:
    """The local store's "stopped server": its folder is gone, or it may not write there."""
    root = tmp_path / "blobs"
    root.mkdir()
    store = LocalBlobStore(root)
    await store.ping()
    kept = oid()
    await put(store, kept, b"kept")
    incoming = await store.begin(oid())
    await incoming.write(b"in flight")
    if how == "removed":
        await anyio.to_thread.run_sync(_remove_tree, root)
        with pytest.raises(UnavailableError, match=f"{root} is not a folder"):
            await store.ping()
        with pytest.raises(UnavailableError):
            await incoming.complete()
        with pytest.raises(UnavailableError):
            await store.begin(oid())
        await every_read_is_unavailable(store, kept)
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes through any folder mode")
        (root / ".objects").chmod(0o500)
        try:
            with pytest.raises(UnavailableError, match=r"\.objects is not a writable folder"):
                await store.ping()
            with pytest.raises(UnavailableError):
                await incoming.complete()
            with pytest.raises(UnavailableError):
                await store.delete(kept)
        finally:
            (root / ".objects").chmod(0o755)
    assert await store.download_url(kept, expires_s=60) is None
    await store.close()


def _remove_tree(root: Path) -> None:
    for folder in (root / ".objects", root / ".incoming"):
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    root.rmdir()


async def test_nothing_listening_is_unavailable() -> None:
    store = S3BlobStore(
        "bucket", endpoint=f"http://127.0.0.1:{free_port()}", access_key="a", secret_key="b", max_attempts=1
    )
    try:
        with pytest.raises(
            UnavailableError, match=r"^the S3 store at http://127\.0\.0\.1:\d+ \(bucket bucket\)"
        ):
            await store.ping()
    finally:
        await store.close()


async def test_wrong_credentials_and_missing_buckets_are_unavailable(s3_server: S3Server) -> None:
    wrong = S3BlobStore(s3_server.bucket, **s3_server.settings(secret_key="not-the-secret"))
    missing = S3BlobStore(f"no-such-{secrets.token_hex(4)}", **s3_server.settings())
    try:
        with pytest.raises(UnavailableError, match="refused"):
            await wrong.ping()
        with pytest.raises(UnavailableError, match="refused"):
            await wrong.size(oid())
        with pytest.raises(UnavailableError, match="no such bucket"):
            await missing.ping()
        with pytest.raises(UnavailableError, match="no such bucket"):
            await missing.unfinished()
    finally:
        await wrong.close()
        await missing.close()


async def test_a_closed_store_is_closed(store: BlobStore) -> None:
    await store.ping()
    await store.close()
    await store.close()
    with pytest.raises(RuntimeError, match="closed"):
        await store.ping()


# --- memory ------------------------------------------------------------------------------------------
def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_an_upload_past_s3s_part_limit_is_too_large_and_leaves_nothing(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "MAX_PARTS", 2)
    store = S3BlobStore(
        s3_server.bucket, f"parts-{secrets.token_hex(4)}", part_size=PART, **s3_server.settings()
    )
    try:
        object_id = oid()
        incoming = await store.begin(object_id)
        for _ in range(2):
            await incoming.write(bytes(PART))  # two parts: the most S3 takes here
        with pytest.raises(TooLargeError, match=f"at most {2 * PART} bytes"):
            await incoming.write(bytes(PART))
        await incoming.abort()
        assert await store.unfinished() == []
        assert await ids(store) == set()
    finally:
        await store.close()


@pytest.mark.slow
async def test_a_large_upload_keeps_memory_flat(s3_server: S3Server) -> None:
    """256 MiB in 4 MiB blocks through the default 5 MiB parts (two in flight): the process grows by far
    less than 64 MiB.

    Measured twice: the resident set sampled during the upload (which memory freed by earlier tests can
    hide), and tracemalloc's peak of what Python allocated during it (which C buffers can hide).
    """
    total, block_size = 256 * MiB, 4 * MiB
    store = S3BlobStore(s3_server.bucket, "memory-test", **s3_server.settings())
    block = bytearray(os.urandom(block_size))
    object_id = oid()
    written = hashlib.sha256()
    peak = baseline = _rss()
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss())
            await asyncio.sleep(0.005)

    try:
        await store.ping()
        baseline = _rss()
        sampler = asyncio.create_task(sample())
        tracemalloc.start()
        traced_before = tracemalloc.get_traced_memory()[0]
        started = time.monotonic()
        incoming = await store.begin(object_id)
        for index in range(total // block_size):
            block[:8] = index.to_bytes(8, "big")  # every block differs
            written.update(block)
            await incoming.write(block)
            peak = max(peak, _rss())
        await incoming.complete()
        elapsed = time.monotonic() - started
        traced_peak = tracemalloc.get_traced_memory()[1] - traced_before
        tracemalloc.stop()
        done.set()
        await sampler
        growth = peak - baseline
        print(
            f"\n256 MiB upload: {elapsed:.2f} s ({total / MiB / elapsed:.0f} MiB/s, with tracemalloc on),"
            f" RSS +{growth / MiB:.1f} MiB, Python peak +{traced_peak / MiB:.1f} MiB"
        )
        assert growth < 64 * MiB
        assert traced_peak < 64 * MiB

        assert await store.size(object_id) == total
        read_back = hashlib.sha256()
        async for chunk in await store.open_range(object_id):
            read_back.update(chunk)
        assert read_back.hexdigest() == written.hexdigest()
    finally:
        done.set()
        if tracemalloc.is_tracing():
            tracemalloc.stop()
        await store.delete(object_id)
        await store.close()


# --- URLs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://otakit", "otakit", ""),
        ("s3://otakit/", "otakit", ""),
        ("s3://otakit/packages", "otakit", "packages"),
        ("s3://my.bucket-1/a/b/", "my.bucket-1", "a/b"),
    ],
)
def test_s3_urls(url: str, bucket: str, prefix: str) -> None:
    store = s3_store_from_url(url, endpoint="http://127.0.0.1:9", access_key="a", secret_key="b")
    assert (store.bucket, store.prefix, store.endpoint) == (bucket, prefix, "http://127.0.0.1:9")


@pytest.mark.parametrize(
    "url",
    [
        "file:///var/lib/otakit",
        "s3://",
        "s3:///prefix",
        "s3://ab",
        "s3://Upper",
        "s3://under_score",
        "s3://-dash",
        "s3://a..b",
        "s3://bucket:9000/x",
        "s3://key:secret@bucket/x",
        "s3://bucket/x?region=eu",
        "s3://bucket/x#y",
        "s3://bucket/a//b",
        "s3://bucket/a/../b",
        "https://bucket.s3.amazonaws.com/x",
    ],
)
def test_bad_s3_urls(url: str) -> None:
    with pytest.raises(ValidationError):
        s3_store_from_url(url, endpoint="http://127.0.0.1:9")


def test_part_sizes_are_checked() -> None:
    with pytest.raises(ValueError, match="part_size"):
        S3BlobStore("bucket", part_size=MIN_PART_SIZE - 1)
    with pytest.raises(ValueError, match="part_size"):
        S3BlobStore("bucket", part_size=6 * 1024 * MiB)


# --- the local store only ------------------------------------------------------------------------
@pytest.fixture
def local(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path)


async def test_local_objects_and_layout_are_where_nginx_finds_them(
    local: LocalBlobStore, tmp_path: Path
) -> None:
    """Objects in ``.objects``, part files in ``.incoming``, layout entries hard links to objects."""
    done, flying = oid(), oid()
    await put(local, done, b"done")
    incoming = await local.begin(flying)
    await incoming.write(b"flying")
    assert (tmp_path / ".objects" / done).read_bytes() == b"done"
    assert (tmp_path / ".incoming" / f"{flying}.part").is_file()
    assert local.layout is not None
    await local.layout.link("pkg", "main", "1.0", done)
    entry = tmp_path / "pkg" / "main" / "pkg-main-1.0.zip"
    assert entry.read_bytes() == b"done"
    assert entry.stat().st_ino == (tmp_path / ".objects" / done).stat().st_ino
    assert entry.stat().st_mode & 0o777 == 0o644
    assert await local.layout.is_object("pkg", "main", "1.0", done)
    assert await ids(local) == {done}  # layout entries are not objects
    await local.layout.unlink("pkg", "main", "1.0")
    assert not entry.exists()
    assert await read(local, done) == b"done"
    await incoming.complete()
    assert await read(local, flying) == b"flying"
    assert await local.unfinished() == []
    assert not (tmp_path / ".incoming" / f"{flying}.part").exists()


async def test_a_killed_upload_is_listed_and_swept(local: LocalBlobStore, tmp_path: Path) -> None:
    dead = oid()
    await anyio.to_thread.run_sync(killed_uploads, tmp_path, {dead: 9 * MiB + 5})
    part = tmp_path / ".incoming" / f"{dead}.part"
    assert part.stat().st_size >= 8 * MiB  # blocks went to disk as they came (at most 4 MiB held back)
    assert await local.unfinished() == [dead]
    assert await ids(local) == set()
    await local.abort_unfinished(dead)
    assert not part.exists()
    assert await local.unfinished() == []
    again = await local.begin(dead)  # the id is free again
    await again.write(b"second try")
    await again.complete()
    assert await read(local, dead) == b"second try"


async def test_a_live_upload_of_another_process_is_not_unfinished(
    local: LocalBlobStore, tmp_path: Path
) -> None:
    live, dead = oid(), oid()
    await anyio.to_thread.run_sync(killed_uploads, tmp_path, {dead: 10})
    with uploader(tmp_path, {live: MiB}) as process:
        assert await local.unfinished() == [dead]
        await local.abort_unfinished(live)  # refused: it is held
        assert (tmp_path / ".incoming" / f"{live}.part").exists()
        with pytest.raises(RuntimeError, match="in flight"):
            await local.begin(live)
        kill(process)
        assert sorted(await local.unfinished()) == sorted([live, dead])
    for object_id in (live, dead):
        await local.abort_unfinished(object_id)
    assert await local.unfinished() == []


async def test_an_upload_of_this_process_is_not_unfinished(local: LocalBlobStore) -> None:
    object_id = oid()
    incoming = await local.begin(object_id)
    await incoming.write(b"mine")
    assert await LocalBlobStore(local.root).unfinished() == []
    await LocalBlobStore(local.root).abort_unfinished(object_id)
    await incoming.complete()
    assert await read(local, object_id) == b"mine"


async def test_local_disk_work_stays_off_the_loop(
    local: LocalBlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every call on the store's files runs in a worker thread; the loop ticks through a slow fsync."""
    loop_thread = threading.get_ident()
    ours: set[int] = set()  # fds opened under the root
    calls: dict[str, set[int]] = {}

    def record(name: str) -> None:
        calls.setdefault(name, set()).add(threading.get_ident())

    def under_root(path: Any) -> bool:
        return isinstance(path, (str, os.PathLike)) and str(path).startswith(str(tmp_path))

    real_open, real_fsync = os.open, os.fsync

    def spy_open(path: Any, *args: Any, **kwargs: Any) -> int:
        fd = real_open(path, *args, **kwargs)
        if under_root(path):
            record("open")
            ours.add(fd)
        return fd

    def slow_fsync(fd: int) -> None:
        if fd in ours:
            record("fsync")
            time.sleep(0.3)  # a slow disk
        real_fsync(fd)

    def spy_fd(name: str) -> Callable[..., Any]:
        real = getattr(os, name)

        def spy(fd: int, *args: Any) -> Any:
            if fd in ours:
                record(name)
            return real(fd, *args)

        return spy

    def spy_path(name: str) -> Callable[..., Any]:
        real = getattr(os, name)

        def spy(path: Any, *args: Any, **kwargs: Any) -> Any:
            if under_root(path):
                record(name)
            return real(path, *args, **kwargs)

        return spy

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "fsync", slow_fsync)
    for name in ("write", "pread", "ftruncate"):
        monkeypatch.setattr(os, name, spy_fd(name))
    for name in ("replace", "unlink", "scandir"):
        monkeypatch.setattr(os, name, spy_path(name))

    ticks: list[float] = []
    stop = anyio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            await anyio.sleep(0.005)

    object_id = oid()
    block = os.urandom(4 * MiB)
    async with anyio.create_task_group() as group:
        group.start_soon(ticker)
        incoming = await local.begin(object_id)
        for _ in range(16):  # 64 MiB
            await incoming.write(block)
        before = len(ticks)
        started = time.monotonic()
        await incoming.complete()  # two slow fsyncs: the file and the folder
        took = time.monotonic() - started
        during = len(ticks) - before
        assert await local.size(object_id) == 64 * MiB
        reader = await local.open_range(object_id, 10, 20)
        assert await reader.read_all() == block[10:21]
        assert object_id in await ids(local)
        await local.delete(object_id)
        stop.set()

    gaps = [later - earlier for earlier, later in itertools.pairwise(ticks)]
    assert took >= 0.6
    assert during >= 20, f"the loop ticked {during} times during a {took:.2f} s complete()"
    assert max(gaps) < 0.25
    assert {"open", "write", "fsync", "replace", "pread", "unlink", "scandir"} <= calls.keys()
    on_loop = sorted(name for name, threads in calls.items() if loop_thread in threads)
    assert on_loop == [], f"disk calls on the event loop: {on_loop}"

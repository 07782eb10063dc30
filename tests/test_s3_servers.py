"""Several real servers on one MariaDB database and one real S3 store (SeaweedFS), end to end.

Three uvicorn processes share the database and the bucket's prefix: A and B stream files (``proxy``), C
answers downloads with a 307 to a presigned link (``redirect``). Uploads go through one and must be
there, byte for byte, through the others; races across processes have one winner; a server killed in
the middle of a multipart upload, a file whose sha256 does not match, and a store that is down leave
no row, no object and no unfinished multipart upload behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.daemon_api import running
from tests.daemon_packages import Publisher
from tests.daemons import write_config
from tests.databases import MySQLServer, mysql_connect, mysql_database
from tests.s3_server import S3Server
from tests.servers import RunningServer, start_server
from tests.tcp_proxy import Fault, TcpProxy

pytestmark = pytest.mark.mysql

MiB = 1024 * 1024
TOKEN = "test-token"
BRANCH = "main"


@dataclass
class Cluster:
    database: MySQLServer
    s3: S3Server
    prefix: str
    a: RunningServer
    b: RunningServer
    c: RunningServer  # redirect mode
    workdir: Path

    def env(self, **overrides: str) -> dict[str, str]:
        return self.s3.env(self.prefix, OTAKIT_LATEST_CACHE_SECONDS="1", **overrides)

    def start(self, name: str, **overrides: str) -> RunningServer:
        folder = self.workdir / name
        folder.mkdir(exist_ok=True)
        return start_server(folder, self.database.url, env=self.env(**overrides))

    # -- what the database and the store hold ----------------------------------------------------
    def rows(self, package: str) -> dict[str, str]:
        """version -> object id of ``package``'s rows."""
        with closing(mysql_connect(self.database.url)) as db, db.cursor() as cur:
            cur.execute("SELECT version, object_id FROM ota WHERE name = %s", (package,))
            return {str(version): str(object_id) for version, object_id in cur.fetchall()}

    def all_object_ids(self) -> set[str]:
        with closing(mysql_connect(self.database.url)) as db, db.cursor() as cur:
            cur.execute("SELECT object_id FROM ota")
            return {str(object_id) for (object_id,) in cur.fetchall()}

    def entries(self) -> list[tuple[str, ...]]:
        with closing(mysql_connect(self.database.url)) as db, db.cursor() as cur:
            cur.execute("SELECT upload_id, owner, name, version FROM uploads")
            return [tuple(map(str, row)) for row in cur.fetchall()]

    def objects(self) -> set[str]:
        client = self.s3.client()
        try:
            found = client.list_objects_v2(Bucket=self.s3.bucket, Prefix=f"{self.prefix}/objects/")
            return {item["Key"].rsplit("/", 1)[1] for item in found.get("Contents", [])}
        finally:
            client.close()

    def multipart_uploads(self) -> list[str]:
        client = self.s3.client()
        try:
            found = client.list_multipart_uploads(Bucket=self.s3.bucket, Prefix=f"{self.prefix}/objects/")
            return [item["Key"] for item in found.get("Uploads", [])]
        finally:
            client.close()

    def assert_store_matches_rows(self) -> None:
        """Every object is a row's, every row has its object, nothing unfinished, nothing in flight."""
        assert self.objects() == self.all_object_ids()
        assert self.multipart_uploads() == []
        assert self.entries() == []


@pytest.fixture(scope="module")
def cluster(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("s3-cluster")
    with mysql_database() as database:
        prefix = f"cluster-{secrets.token_hex(4)}"
        started: list[RunningServer] = []
        try:
            env = s3_server.env(prefix, OTAKIT_LATEST_CACHE_SECONDS="1")
            for name, extra in (("a", {}), ("b", {}), ("c", {"OTAKIT_DOWNLOAD_MODE": "redirect"})):
                folder = workdir / name
                folder.mkdir()
                started.append(start_server(folder, database.url, env={**env, **extra}))
            a, b, c = started
            yield Cluster(database, s3_server, prefix, a, b, c, workdir)
        finally:
            for server in started:
                server.stop()


def content_of(package: str, version: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {
        "package": package,
        "branch": BRANCH,
        "version": version,
        "sha256": hashlib.sha256(data).hexdigest(),
        **extra,
    }


def upload(
    server: RunningServer, content: dict[str, Any], data: bytes, *, force: bool = False
) -> httpx.Response:
    with server.client() as client:
        return client.put(
            "/upload",
            files=[
                ("content", (None, json.dumps(content), "application/json")),
                ("file", ("package.zip", data, "application/zip")),
            ],
            headers={"Authorization": f"Bearer {TOKEN}"},
            params={"force": "1"} if force else None,
        )


def file_path(package: str, version: str) -> str:
    return f"/otafiles/{package}/{BRANCH}/{package}-{BRANCH}-{version}.zip"


def wait_latest(server: RunningServer, package: str, version: str, timeout: float = 5) -> float:
    """Seconds until ``server`` answers ``version`` as ``package``'s latest."""
    started = time.monotonic()
    with server.client() as client:
        while True:
            answer = client.get("/latestVersion", params={"package": package, "branch": BRANCH})
            if answer.status_code == 200 and answer.json()["content.json"]["version"] == version:
                return time.monotonic() - started
            assert time.monotonic() - started < timeout, f"{server.url} still answers {answer.text}"
            time.sleep(0.05)


def test_an_upload_through_one_server_downloads_the_same_through_the_others(
    cluster: Cluster, pkg: str
) -> None:
    data = os.urandom(12 * MiB + 12345)  # several 8 MiB parts: a multipart upload
    sha = hashlib.sha256(data).hexdigest()
    answer = upload(cluster.a, content_of(pkg, "1.0.0", data), data)
    assert answer.status_code == 200, answer.text
    assert cluster.rows(pkg).keys() == {"1.0.0"}
    assert cluster.objects() >= set(cluster.rows(pkg).values())
    for server in (cluster.b, cluster.c):
        wait_latest(server, pkg, "1.0.0")

    path = file_path(pkg, "1.0.0")
    with cluster.b.client() as b:
        whole = b.get(path)
        assert whole.status_code == 200
        assert whole.content == data
        assert whole.headers["etag"] == f'"{sha}"'
        assert whole.headers["content-length"] == str(len(data))
        part = b.get(path, headers={"Range": "bytes=9000000-9000099"})
        assert part.status_code == 206
        assert part.content == data[9000000:9000100]
        assert part.headers["content-range"] == f"bytes 9000000-9000099/{len(data)}"
        resumed = b.get(path, headers={"Range": f"bytes={len(data) - 777}-", "If-Range": f'"{sha}"'})
        assert resumed.status_code == 206
        assert resumed.content == data[-777:]
        stale = b.get(path, headers={"Range": "bytes=5-9", "If-Range": '"another"'})
        assert stale.status_code == 200  # If-Range no longer matches: the whole file
        assert len(stale.content) == len(data)
        assert b.get(path, headers={"If-None-Match": f'"{sha}"'}).status_code == 304
        head = b.head(path)
        assert (head.status_code, head.headers["content-length"], head.content) == (200, str(len(data)), b"")
        past = b.get(path, headers={"Range": f"bytes={len(data)}-"})
        assert past.status_code == 416
        assert past.headers["content-range"] == f"bytes */{len(data)}"

    with cluster.c.client() as c:
        assert c.get(path, headers={"If-None-Match": f'"{sha}"'}).status_code == 304
        moved = c.get(path)
        assert moved.status_code == 307
        link = moved.headers["location"]
        assert link.startswith(f"{cluster.s3.endpoint}/{cluster.s3.bucket}/{cluster.prefix}/objects/")
        assert "X-Amz-Signature=" in link
        assert "X-Amz-Expires=300" in link
    with httpx.Client(timeout=60) as plain:
        assert plain.get(link).content == data
        tail = plain.get(link, headers={"Range": "bytes=12582912-"})
        assert tail.status_code == 206
        assert tail.content == data[12582912:]
        assert 'filename="' in plain.get(link, headers={"Range": "bytes=0-0"}).headers["content-disposition"]
    cluster.assert_store_matches_rows()


def test_a_forced_replacement_through_another_server_replaces_row_and_object(
    cluster: Cluster, pkg: str
) -> None:
    first, second = os.urandom(100_000), os.urandom(200_000)
    assert upload(cluster.a, content_of(pkg, "2.0", first), first).status_code == 200
    [old_object] = cluster.rows(pkg).values()
    assert upload(cluster.b, content_of(pkg, "2.0", second), second).status_code == 409
    assert upload(cluster.b, content_of(pkg, "2.0.0", second), second, force=True).status_code == 200
    assert cluster.rows(pkg).keys() == {"2.0.0"}
    assert old_object not in cluster.objects()
    with cluster.a.client() as a:
        assert a.get(file_path(pkg, "2.0.0")).content == second
        assert a.get(file_path(pkg, "2.0")).status_code == 404
    cluster.assert_store_matches_rows()


def race(send: Any, calls: Any) -> list[int]:
    """``send(*args)`` for each args of ``calls`` at once, in threads; the status codes."""
    todo = list(calls)
    statuses: list[int] = []
    gate = threading.Barrier(len(todo))

    def one(args: tuple[Any, ...]) -> None:
        gate.wait()
        statuses.append(send(*args).status_code)

    threads = [threading.Thread(target=one, args=(args,)) for args in todo]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return statuses


def test_one_upload_wins_a_race_across_processes(cluster: Cluster, pkg: str) -> None:
    for round_ in range(6):
        version = f"3.{round_}"
        bodies = [os.urandom(64 * 1024 + n) for n in range(2)]
        statuses = race(
            lambda server, data, version=version: upload(server, content_of(pkg, version, data), data),
            zip((cluster.a, cluster.b), bodies, strict=True),
        )
        assert sorted(statuses) == [200, 409], statuses
        with cluster.c.client() as c:
            served = c.get(file_path(pkg, version), follow_redirects=True).content
        assert served in bodies  # the winner's bytes, whole
        assert cluster.rows(pkg)[version] in cluster.objects()
    cluster.assert_store_matches_rows()


def _otakit(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otakit", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_server_killed_mid_upload_leaves_nothing_after_fsck(cluster: Cluster, pkg: str) -> None:
    victim = cluster.start("victim")
    data = os.urandom(40 * MiB)
    content = content_of(pkg, "4.0", data)
    sent_enough = threading.Event()
    release = threading.Event()

    def body() -> Iterator[bytes]:
        boundary_head = (
            f'--xyz\r\nContent-Disposition: form-data; name="content"\r\n\r\n{json.dumps(content)}\r\n'
            '--xyz\r\nContent-Disposition: form-data; name="file"; filename="p.zip"\r\n\r\n'
        ).encode()
        yield boundary_head
        for offset in range(0, 24 * MiB, MiB):
            yield data[offset : offset + MiB]
        sent_enough.set()
        release.wait(60)  # until the server is dead
        yield data[24 * MiB :]

    outcome: dict[str, Any] = {}

    def send() -> None:
        try:
            with httpx.Client(timeout=60) as client:
                outcome["response"] = client.put(
                    f"{victim.url}/upload",
                    content=body(),
                    headers={
                        "Authorization": f"Bearer {TOKEN}",
                        "Content-Type": "multipart/form-data; boundary=xyz",
                    },
                )
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=send)
    thread.start()
    try:
        assert sent_enough.wait(60)
        deadline = time.monotonic() + 30
        while not cluster.multipart_uploads():  # 16 MiB and more went out: two parts at least
            assert time.monotonic() < deadline, "no multipart upload began"
            time.sleep(0.05)
        [entry] = cluster.entries()  # the tests of this module run one at a time
        victim.kill()
    finally:
        release.set()
        thread.join(60)
    assert "response" not in outcome, outcome
    upload_id = entry[0]
    assert cluster.multipart_uploads() == [f"{cluster.prefix}/objects/{upload_id}"]

    done = _otakit({**cluster.env(), "OTAKIT_DATABASE_URL": cluster.database.url}, "server", "fsck")
    assert done.returncode == 0, done.stderr
    assert re.search(r"recovered 1 interrupted upload\(s\)", done.stdout), done.stdout
    assert cluster.rows(pkg) == {}
    assert upload_id not in cluster.objects()
    cluster.assert_store_matches_rows()
    again = cluster.start("victim")  # starts cleanly, and the version can be uploaded now
    try:
        assert upload(again, content, data).status_code == 200
    finally:
        again.stop()
    cluster.assert_store_matches_rows()


def test_a_sha256_mismatch_leaves_no_row_and_no_object(cluster: Cluster, pkg: str) -> None:
    data = os.urandom(20 * MiB)  # two parts sent before the mismatch shows
    before = cluster.objects()
    wrong = content_of(pkg, "5.0", data) | {"sha256": "0" * 64}
    answer = upload(cluster.a, wrong, data)
    assert answer.status_code == 400
    assert "sha256 mismatch" in answer.json()["error"]
    assert cluster.rows(pkg) == {}
    assert cluster.objects() == before
    cluster.assert_store_matches_rows()


def _requests(server: RunningServer, route: str, status: int) -> float:
    """The server's count of answers ``status`` on ``route`` (its /metrics)."""
    with server.client() as client:
        text = client.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        series = line.startswith("otakit_http_requests_total{") and f'route="{route}"' in line
        if series and f'status="{status}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _wait(condition: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_store_that_is_down_is_503_and_the_cli_and_the_daemon_retry(
    cluster: Cluster, pkg: str, tmp_path: Path
) -> None:
    endpoint_port = int(cluster.s3.endpoint.rsplit(":", 1)[1])
    with TcpProxy(endpoint_port) as proxy:
        # A short lease: what a failed cleanup leaves is recovered within seconds once the store is back.
        server = cluster.start("behind-proxy", OTAKIT_S3_ENDPOINT=proxy.url, OTAKIT_UPLOAD_LEASE_SECONDS="2")
        try:
            with server.client() as client:
                proxy.down()
                assert client.get("/healthz").status_code == 503
                # A download while the store is down: 503, nothing else changes.
                data = os.urandom(300_000)
                proxy.up()
                assert upload(server, content_of(pkg, "0.1", data), data).status_code == 200
                proxy.down()
                refused = client.get(file_path(pkg, "0.1"))
                assert refused.status_code == 503
                assert "S3 store" in refused.json()["error"]

                # The CLI's upload meets the outage, is answered 503, and goes through once it ends.
                package = tmp_path / "pkg.zip"
                package.write_bytes(os.urandom(2 * MiB))
                content = tmp_path / "content.json"
                content.write_text(json.dumps(content_of(pkg, "1.0", package.read_bytes())))
                cli = subprocess.Popen(
                    [
                        *(sys.executable, "-m", "otakit", "upload", str(package)),
                        *("--content", str(content), "--server", server.url, "--token", TOKEN),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                _wait(lambda: _requests(server, "/upload", 503) >= 1, "the upload's 503")
                assert cluster.rows(pkg).keys() == {"0.1"}  # nothing of the refused attempt
                proxy.up()
                _, err = cli.communicate(timeout=60)
                assert cli.returncode == 0, err
                assert client.get(file_path(pkg, "1.0")).content == package.read_bytes()
                _wait(lambda: cluster.entries() == [], "recovery of the refused attempt's leftovers", 30)
                cluster.assert_store_matches_rows()

            # A real daemon installs while the store is down: its download is retried until it is back.
            publisher = Publisher(server, tmp_path / "publish")
            try:
                proxy.up()
                publisher.publish(pkg, "2.0", branch="major")
                config = write_config(tmp_path / "device", download_retries=8)
                with running(config) as api:
                    proxy.down()
                    before = _requests(server, "/otafiles/{path}", 503)
                    job = api.start_job(
                        "POST",
                        "/packages",
                        json={"package": pkg, "branch": "major", "remote": server.url, "local": f"./{pkg}"},
                    )
                    _wait(lambda: _requests(server, "/otafiles/{path}", 503) > before, "a download's 503")
                    proxy.up()
                    finished = api.wait_job(job["id"], timeout=120)
                    assert finished["state"] == "succeeded", finished
                    assert api.version(pkg) == "2.0"
            finally:
                publisher.close()
        finally:
            server.stop()


def test_a_daemon_installs_through_links_that_are_cut_and_expire(
    cluster: Cluster, pkg: str, tmp_path: Path
) -> None:
    """A real daemon follows the server's 307 to the store. Its first link is cut mid-way, the next
    one expires before it reaches the store (403): each attempt asks the server for a fresh link and
    resumes with Range, and the install is byte-exact."""
    store_port = int(cluster.s3.endpoint.rsplit(":", 1)[1])
    with TcpProxy(store_port) as public:
        server = cluster.start(
            "redirecting",
            OTAKIT_DOWNLOAD_MODE="redirect",
            OTAKIT_DOWNLOAD_URL_SECONDS="1",
            OTAKIT_S3_PUBLIC_ENDPOINT=public.url,
        )
        publisher = Publisher(server, tmp_path / "publish")
        try:
            files = {"big.bin": os.urandom(3 * MiB), "version.txt": b"1.0\n"}
            publisher.publish(pkg, "1.0", files)
            public.plan = [Fault(cut_after=1 * MiB), Fault(delay_s=2.5)]
            config = write_config(tmp_path / "device", download_retries=6)
            with running(config) as api:
                job = api.install(publisher, pkg)
                assert job["to_version"] == "1.0"
                files_now, record = api.state_of(pkg)
                assert files_now == files
                assert record is not None
                assert record["version"] == "1.0"
        finally:
            publisher.close()
            server.stop()
    statuses = [line.split(" ", 2)[1] for line in public.status_lines]
    assert statuses[:2] == ["200", "403"], public.status_lines  # cut, then expired
    assert statuses[-1] == "206", public.status_lines  # resumed where the cut left it
    cluster.assert_store_matches_rows()

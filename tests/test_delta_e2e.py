"""Delta updates end to end: real servers, a real daemon, packages made by ``otakit pack``.

A one-file change reaches the device as a delta of a few KB, built from the installed files and checked
against the signed ``tree_sha256``; a changed installed file or a damaged delta falls back to the zip;
concurrent first requests make the delta once; a daemon killed while it applies one keeps the old version.
"""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.daemon_api import Api, leftovers, running
from tests.daemon_packages import Publisher, tree
from tests.daemons import start_daemon, write_config
from tests.servers import RunningServer, run_server

MiB = 1024 * 1024


def files_of(version: str, big: bytes, **extra: bytes) -> dict[str, bytes]:
    return {
        "big.bin": big,
        "version.txt": f"{version}\n".encode(),
        "lib/helper.py": b"print('helper')\n" * 50,
        **extra,
    }


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    (tmp_path / "server").mkdir()
    with run_server(tmp_path / "server", f"sqlite:///{tmp_path / 'ota.db'}") as running_server:
        yield running_server


@pytest.fixture
def publisher(server: RunningServer, tmp_path: Path) -> Iterator[Publisher]:
    made = Publisher(server, tmp_path / "publish")
    try:
        yield made
    finally:
        made.close()


def deltas(database: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(database)) as db:
        return list(db.execute("SELECT state, object_id, size, sha256 FROM deltas"))


def update(api: Api, name: str, state: str = "succeeded") -> dict[str, Any]:
    return api.run_job("POST", f"/packages/{name}/update", state)


def test_a_one_byte_change_arrives_as_a_delta_of_a_few_kb(
    server: RunningServer, publisher: Publisher, pkg: str, tmp_path: Path
) -> None:
    big = os.urandom(3 * MiB)
    publisher.publish(pkg, "1.0", files_of("1.0", big, **{"old.txt": b"removed in 1.1"}))
    changed = bytearray(big)
    changed[MiB] ^= 0xFF
    new_files = files_of("1.1", bytes(changed), **{"docs/new.md": b"# added in 1.1\n"})
    content = publisher.publish(pkg, "1.1", new_files)
    assert len(content["tree_sha256"]) == 64
    zip_size = len(httpx.get(f"{server.url}/otafiles/{pkg}/major/{pkg}-major-1.1.zip").content)

    with running(write_config(tmp_path / "device", auto_update=False)) as api:
        first = api.install(publisher, pkg, version="1.0")
        assert first["delta"] is False
        assert first["downloaded"] > 3 * MiB
        job = update(api, pkg)
        assert job["delta"] is True, job["log"]
        assert job["downloaded"] < 10_000, job["downloaded"]  # against a zip of 3 MiB
        assert job["downloaded"] < zip_size / 100
        assert any("tree matches tree_sha256" in line for line in job["log"])
        files, record = api.state_of(pkg)
        assert files == new_files
        assert record is not None
        assert record["version"] == "1.1"
        assert (api.folder / pkg / "big.bin").stat().st_mode & 0o777 == 0o644
        assert leftovers(api.folder, pkg) == [f".{pkg}.otakit-prev"]
    [(state, object_id, size, _)] = deltas(tmp_path / "ota.db")
    assert (state, size) == ("ready", job["downloaded"])
    assert (server.files_dir / ".objects" / object_id).is_file()

    # Rolling back and forward again takes the kept delta: it is not made twice.
    with httpx.Client(base_url=server.url) as client:
        again = client.get(f"/otadelta/{pkg}/major/1.0/1.1")
        assert again.status_code == 200
        assert len(again.content) == size
        assert client.get(f"/otadelta/{pkg}/major/1.1/1.0").status_code == 404  # upgrades only
        assert client.get(f"/otadelta/{pkg}/major/1.1/1.1").status_code == 404
        assert client.get(f"/otadelta/{pkg}/major/1.0/9.9").status_code == 404
        assert client.get(f"/otadelta/{pkg}/major/..%2F/1.1").status_code in (400, 404)


def test_a_changed_installed_file_falls_back_to_the_zip(
    server: RunningServer, publisher: Publisher, pkg: str, tmp_path: Path
) -> None:
    big = os.urandom(MiB)
    publisher.publish(pkg, "1.0", files_of("1.0", big))
    new_files = files_of("1.1", big[:-1] + b"!")
    publisher.publish(pkg, "1.1", new_files)
    with running(write_config(tmp_path / "device", auto_update=False)) as api:
        api.install(publisher, pkg, version="1.0")
        (api.folder / pkg / "lib" / "helper.py").write_bytes(b"print('changed on the device')\n")
        job = update(api, pkg)
        assert job["delta"] is False
        assert any("did not build 1.1" in line for line in job["log"]), job["log"]
        assert job["downloaded"] > MiB  # the delta, then the zip
        assert api.state_of(pkg)[0] == new_files  # the changed file is replaced too
        assert leftovers(api.folder, pkg) == [f".{pkg}.otakit-prev"]


def test_a_damaged_delta_falls_back_to_the_zip(
    server: RunningServer, publisher: Publisher, pkg: str, tmp_path: Path
) -> None:
    big = os.urandom(MiB)
    publisher.publish(pkg, "1.0", files_of("1.0", big))
    new_files = files_of("1.1", b"X" + big[1:])
    publisher.publish(pkg, "1.1", new_files)
    assert httpx.get(f"{server.url}/otadelta/{pkg}/major/1.0/1.1").status_code == 200
    [(_, object_id, _, _)] = deltas(tmp_path / "ota.db")
    # A server that serves a damaged delta under a matching ETag (its own record changed too): only the
    # tree check against the signed tree_sha256 stands between it and the device.
    stored = server.files_dir / ".objects" / object_id
    damaged = bytearray(stored.read_bytes())
    damaged[-20] ^= 0x55
    stored.unlink()
    stored.write_bytes(bytes(damaged))
    with closing(sqlite3.connect(tmp_path / "ota.db")) as db, db:
        db.execute("UPDATE deltas SET sha256 = ?", (hashlib.sha256(damaged).hexdigest(),))
    with running(write_config(tmp_path / "device", auto_update=False)) as api:
        api.install(publisher, pkg, version="1.0")
        job = update(api, pkg)
        assert job["delta"] is False
        assert any("did not build 1.1" in line for line in job["log"]), job["log"]
        assert api.state_of(pkg)[0] == new_files
        assert leftovers(api.folder, pkg) == [f".{pkg}.otakit-prev"]


def test_no_delta_without_tree_manifests_or_when_it_would_not_be_smaller(
    server: RunningServer, publisher: Publisher, pkg: str
) -> None:
    publisher.publish(pkg, "1.0", {"data.bin": os.urandom(200_000)})
    publisher.publish(pkg, "2.0", {"data.bin": os.urandom(200_000)})  # nothing in common
    publisher.publish_zip(f"{pkg}-hand", "1.0", _zip({"a.txt": b"a"}))  # no tree_sha256
    publisher.publish_zip(f"{pkg}-hand", "2.0", _zip({"a.txt": b"b"}))
    with httpx.Client(base_url=server.url) as client:
        assert client.get(f"/otadelta/{pkg}/major/1.0/2.0").status_code == 404
        assert client.get(f"/otadelta/{pkg}/major/1.0/2.0").status_code == 404  # remembered: none
        assert client.get(f"/otadelta/{pkg}-hand/major/1.0/2.0").status_code == 404
        metrics = client.get("/metrics").text
    assert 'otakit_deltas_total{result="none"} 1.0' in metrics


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_concurrent_first_requests_make_the_delta_once(tmp_path: Path, pkg: str) -> None:
    database = f"sqlite:///{tmp_path / 'ota.db'}"
    with run_server(tmp_path, database) as first, run_server(tmp_path, database) as second:
        publisher = Publisher(first, tmp_path / "publish")
        try:
            big = os.urandom(4 * MiB)
            publisher.publish(pkg, "1.0", files_of("1.0", big))
            publisher.publish(pkg, "1.1", files_of("1.1", big[: 2 * MiB] + b"changed" + big[2 * MiB + 7 :]))
        finally:
            publisher.close()
        bodies: list[bytes] = []
        statuses: list[int] = []
        gate = threading.Barrier(12)

        def ask(server: RunningServer) -> None:
            gate.wait()
            answer = httpx.get(f"{server.url}/otadelta/{pkg}/major/1.0/1.1", timeout=120)
            statuses.append(answer.status_code)
            bodies.append(answer.content)

        threads = [threading.Thread(target=ask, args=(first if n % 2 else second,)) for n in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert statuses == [200] * 12
        assert len(set(bodies)) == 1
        made = 0.0
        for server in (first, second):
            for line in httpx.get(f"{server.url}/metrics").text.splitlines():
                if line.startswith("otakit_deltas_total{"):
                    made += float(line.rsplit(" ", 1)[1])
        assert made == 1  # one process made it, once
        assert len(deltas(tmp_path / "ota.db")) == 1
        objects = list((tmp_path / "files" / ".objects").iterdir())
        assert len(objects) == 3  # two versions and one delta


def test_a_daemon_killed_while_applying_a_delta_keeps_the_old_version(
    server: RunningServer, publisher: Publisher, pkg: str, tmp_path: Path
) -> None:
    """Many changed files make the apply take a while; the daemon is SIGKILLed once its staging folder
    appears, then restarted: the old version is whole, nothing is left beside it, and the update then
    goes through."""
    old = {f"part-{n:02d}.bin": os.urandom(512 * 1024) for n in range(40)}
    new = {name: data[:1000] + b"new" + data[1003:] for name, data in old.items()}
    publisher.publish(pkg, "1.0", old)
    publisher.publish(pkg, "1.1", new)
    assert httpx.get(f"{server.url}/otadelta/{pkg}/major/1.0/1.1", timeout=120).status_code == 200
    config = write_config(tmp_path / "device", auto_update=False)
    with running(config) as api:
        api.install(publisher, pkg, version="1.0")
    stage = tmp_path / "device" / f".{pkg}.otakit-new"
    killed = False
    for _ in range(5):
        daemon = start_daemon(config)
        api = Api(daemon)
        try:
            job = api.start_job("POST", f"/packages/{pkg}/update")
            deadline = time.monotonic() + 60
            while not stage.exists() and time.monotonic() < deadline:
                if api.get(f"/jobs/{job['id']}")["job"]["state"] in ("succeeded", "failed"):
                    break
            if stage.exists():
                daemon.kill()
                killed = True
        finally:
            api.close()
            daemon.stop()
        if killed:
            break
        with running(config) as again:  # it got through before the kill: go back and try again
            again.run_job("POST", f"/packages/{pkg}/rollback")
    assert killed, "the daemon finished every apply before it could be killed"
    with running(config) as api:
        files, record = api.state_of(pkg)
        assert record is not None
        assert record["version"] == "1.0"
        assert files == old
        assert leftovers(api.folder, pkg) == []  # 1.0 was the first install: nothing kept before it
        job = update(api, pkg)
        assert job["delta"] is True
        assert api.state_of(pkg)[0] == new
    assert tree(tmp_path / "device" / pkg) == new

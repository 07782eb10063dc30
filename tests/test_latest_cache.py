"""/latestVersion answers from a per-process cache, ended by the database's change counter after an upload
anywhere."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from otakit.server.latest_cache import LatestCache
from otakit.server.repository.changes import REFRESH_SECONDS
from tests.api_client import upload
from tests.databases import BACKENDS, database_url
from tests.samples import content_for, make_zip
from tests.servers import RunningServer, run_server


def test_cache_entries_live_under_one_stamp() -> None:
    cache = LatestCache(max_entries=2)
    key = ("pkg", "major")
    assert cache.get(key, "s1") is None
    cache.put(key, "s1", b"body", '"e"')
    assert cache.get(key, "s1") == (b"body", '"e"')
    assert cache.get(key, "s2") is None  # the stamp changed: everything goes
    assert cache.get(key, "s2") is None
    cache.put(key, "s1", b"old", '"o"')  # made under a stamp that has changed since
    assert cache.get(key, "s2") is None
    for name in ["a", "b", "c"]:
        cache.put((name, "x"), "s2", name.encode(), '"x"')
    assert cache.get(("a", "x"), "s2") is None  # the oldest went: at most max_entries
    assert cache.get(("c", "x"), "s2") == (b"c", '"x"')


def test_cache_entries_expire() -> None:
    cache = LatestCache(max_age=0.0)
    cache.put(("p", "b"), "s", b"body", '"e"')
    assert cache.get(("p", "b"), "s") is None


def latest_of(server: RunningServer, package: str) -> dict[str, Any]:
    with server.client() as client:
        answer: dict[str, Any] = client.get(
            "/latestVersion", params={"package": package, "branch": "major"}
        ).json()
    return answer["content.json"]


def seen_within(server: RunningServer, package: str, key: str, value: str, seconds: float) -> float:
    """How long until ``server`` answers ``value`` for ``key``; fails after ``seconds``."""
    started = time.monotonic()
    while latest_of(server, package)[key] != value:
        assert time.monotonic() - started < seconds, f"{server.url} still answers an old {key}"
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_processes_never_serve_a_stale_latest(backend: str, tmp_path: Path) -> None:
    """Two server processes share the database (and here the files): an upload through one is answered
    at once by it, and by the other as soon as it reads the change counter (REFRESH_SECONDS)."""
    with (
        database_url(backend, tmp_path) as url,
        run_server(tmp_path, url) as first,
        run_server(tmp_path, url) as second,
    ):
        for version in ["1.0", "1.1", "1.2", "2.0"]:
            data = make_zip({"v": version.encode()})
            via, other = (first, second) if version != "1.1" else (second, first)
            assert upload(via, content_for(data, "shared", version), data).status_code == 200
            assert latest_of(via, "shared")["version"] == version  # its own change: at once
            seen_within(other, "shared", "version", version, REFRESH_SECONDS + 2)
            for reader in (first, second):  # and from the caches the next time
                assert latest_of(reader, "shared")["version"] == version
        # a forced replacement of the latest version is seen too
        data = make_zip({"v": b"replaced"})
        replaced = content_for(data, "shared", "2.0", updateInfo="replaced")
        assert upload(second, replaced, data, params={"force": "1"}).status_code == 200
        seen_within(first, "shared", "updateInfo", "replaced", REFRESH_SECONDS + 2)

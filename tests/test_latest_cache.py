"""/latestVersion answers from a per-process cache, and is never stale after an upload anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from otakit.server.latest_cache import LatestCache
from tests.api_client import upload
from tests.databases import BACKENDS, database_url
from tests.samples import content_for, make_zip
from tests.servers import run_server


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


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_processes_never_serve_a_stale_latest(backend: str, tmp_path: Path) -> None:
    """Two server processes share the database and files; an upload through one is seen by the other."""
    with (
        database_url(backend, tmp_path) as url,
        run_server(tmp_path, url) as first,
        run_server(tmp_path, url) as second,
    ):
        params = {"package": "shared", "branch": "major"}
        for version in ["1.0", "1.1", "1.2", "2.0"]:
            data = make_zip({"v": version.encode()})
            via = first if version != "1.1" else second
            assert upload(via, content_for(data, "shared", version), data).status_code == 200
            for reader in (first, second, first, second):  # each answers from its cache the second time
                with reader.client() as client:
                    latest = client.get("/latestVersion", params=params).json()
                assert latest["content.json"]["version"] == version
        # a forced replacement of the latest version is seen too
        data = make_zip({"v": b"replaced"})
        replaced = content_for(data, "shared", "2.0", updateInfo="replaced")
        assert upload(second, replaced, data, params={"force": "1"}).status_code == 200
        with first.client() as client:
            assert (
                client.get("/latestVersion", params=params).json()["content.json"]["updateInfo"] == "replaced"
            )

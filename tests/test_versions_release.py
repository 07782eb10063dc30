"""Released and held versions (DESIGN.md, "Versions: released or held"), against a real server on
loopback, on SQLite and on MariaDB: ``PUT /upload?hold=1`` and the admin release, hold and delete routes."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from otakit.errors import ValidationError
from otakit.server.settings import load_settings
from tests.api_client import upload
from tests.databases import BACKENDS, database_url
from tests.samples import content_for, make_zip
from tests.servers import RunningServer, run_server

ADMIN = "admin-token"
PUBLISHER = "test-token"  # tests/servers.py's upload token


@pytest.fixture(scope="module", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A real server with admin tokens and the default latest_cache_seconds (5 s)."""
    workdir = tmp_path_factory.mktemp(f"release-{request.param}")
    env = {"OTAKIT_ADMIN_TOKENS": f"{ADMIN},second-admin"}
    with database_url(request.param, workdir) as url, run_server(workdir, url, env=env) as running:
        yield running


def _status(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    if status != 200:
        assert isinstance(body["error"], str)
        assert body["error"]
    return body


def _publish(
    server: RunningServer, package: str, version: str, *, held: bool = False, **params: str
) -> bytes:
    """Upload a version; ``held`` adds ``hold=1``, ``params`` are further query flags."""
    data = make_zip({"app.txt": f"{package} {version}".encode()})
    if held:
        params["hold"] = "1"
    _status(upload(server, content_for(data, package, version), data, params=params), 200)
    return data


def _latest(client: httpx.Client, package: str) -> str | None:
    """The version /latestVersion offers, or None for its 404."""
    response = client.get("/latestVersion", params={"package": package, "branch": "major"})
    if response.status_code == 404:
        _status(response, 404)
        return None
    version: str = _status(response, 200)["content.json"]["version"]
    return version


def _listed(client: httpx.Client, package: str) -> list[tuple[str, bool]]:
    entries = _status(client.get("/getVersion", params={"package": package}), 200)["list"]
    return [(e["version"], e["released"]) for e in entries]


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _admin(
    client: httpx.Client,
    action: str,
    package: str,
    version: str,
    branch: str = "major",
    token: str | None = ADMIN,
    authorization: str | None = None,
) -> httpx.Response:
    """POST a release or hold, with ``Bearer token``, or the ``authorization`` header as given."""
    if authorization is None and token is not None:
        authorization = f"Bearer {token}"
    headers = {"Authorization": authorization} if authorization is not None else {}
    return client.post(f"/api/v1/versions/{package}/{branch}/{version}/{action}", headers=headers)


def test_a_held_only_version_is_not_offered(server: RunningServer, pkg: str) -> None:
    data = _publish(server, pkg, "1.0.0", held=True)
    with server.client() as client:
        assert _latest(client, pkg) is None
        assert _listed(client, pkg) == [("1.0.0", False)]
        got = client.get(f"/otafiles/{pkg}/major/{pkg}-major-1.0.0.zip")  # still downloadable
        assert got.status_code == 200
        assert got.content == data


def test_upload_without_hold_is_released_as_before(server: RunningServer, pkg: str) -> None:
    _publish(server, pkg, "1.0.0")
    _publish(server, pkg, "1.1.0", hold="0")
    with server.client() as client:
        assert _latest(client, pkg) == "1.1.0"
        assert _listed(client, pkg) == [("1.1.0", True), ("1.0.0", True)]


def test_release_offers_it_at_once_and_hold_takes_it_back(server: RunningServer, pkg: str) -> None:
    _publish(server, pkg, "1.0.0")
    with server.client() as client:
        assert _latest(client, pkg) == "1.0.0"  # an answer now in the server's cache
        _publish(server, pkg, "2.0.0", held=True)
        assert _latest(client, pkg) == "1.0.0"
        assert _listed(client, pkg) == [("2.0.0", False), ("1.0.0", True)]

        assert _status(_admin(client, "release", pkg, "2.0.0"), 200) == {"status": 200}
        assert _latest(client, pkg) == "2.0.0"  # at once: no cached answer outlives the release
        assert _listed(client, pkg) == [("2.0.0", True), ("1.0.0", True)]
        _status(_admin(client, "release", pkg, "2.0.0", token="second-admin"), 200)  # again: the same

        assert _status(_admin(client, "hold", pkg, "2.0.0"), 200) == {"status": 200}
        assert _latest(client, pkg) == "1.0.0"
        assert _listed(client, pkg) == [("2.0.0", False), ("1.0.0", True)]

        _status(_admin(client, "hold", pkg, "1.0"), 200)  # 1.0 is 1.0.0
        assert _latest(client, pkg) is None
        assert client.get(f"/otafiles/{pkg}/major/{pkg}-major-2.0.0.zip").status_code == 200


def test_latest_etag_changes_with_release(server: RunningServer, pkg: str) -> None:
    _publish(server, pkg, "1.0.0")
    _publish(server, pkg, "2.0.0", held=True)
    with server.client() as client:
        params = {"package": pkg, "branch": "major"}
        etag = client.get("/latestVersion", params=params).headers["etag"]
        _status(_admin(client, "release", pkg, "2.0.0"), 200)
        answer = client.get("/latestVersion", params=params, headers={"If-None-Match": etag})
        assert answer.status_code == 200
        assert answer.json()["content.json"]["version"] == "2.0.0"


def test_a_forced_reupload_takes_its_own_flag(server: RunningServer, pkg: str) -> None:
    _publish(server, pkg, "1.0.0")
    _publish(server, pkg, "1.0.0", held=True, force="1")
    with server.client() as client:
        assert _listed(client, pkg) == [("1.0.0", False)]
        assert _latest(client, pkg) is None
    _publish(server, pkg, "1.0.0", force="1")
    with server.client() as client:
        assert _listed(client, pkg) == [("1.0.0", True)]
        assert _latest(client, pkg) == "1.0.0"


@pytest.mark.parametrize("action", ["release", "hold"])
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Bearer wrong",
        f"Bearer {PUBLISHER}",  # a publisher token is not an admin token
        "Bearer second-token",
        f"Bearer {ADMIN}x",
        f"Bearer {ADMIN[:-1]}",
        f"Basic {ADMIN}",
        ADMIN,
    ],
)
def test_without_a_valid_admin_token_is_401(
    server: RunningServer, pkg: str, action: str, authorization: str | None
) -> None:
    _publish(server, pkg, "1.0.0", held=True)
    with server.client() as client:
        for version in ("1.0.0", "9.9"):  # no hint whether the version exists
            response = _admin(client, action, pkg, version, token=None, authorization=authorization)
            _status(response, 401)
        assert _listed(client, pkg) == [("1.0.0", False)]


def test_an_admin_token_is_not_a_publisher_token(server: RunningServer, pkg: str) -> None:
    data = make_zip()
    _status(upload(server, content_for(data, pkg, "1.0.0"), data, token=ADMIN), 401)


@pytest.mark.parametrize("action", ["release", "hold"])
def test_unknown_version_is_404(server: RunningServer, pkg: str, action: str) -> None:
    _publish(server, pkg, "1.0.0")
    with server.client() as client:
        _status(_admin(client, action, pkg, "1.0.1"), 404)
        _status(_admin(client, action, pkg, "1.0.0", branch="beta"), 404)
        _status(_admin(client, action, "unknown-" + pkg, "1.0.0"), 404)
        assert _listed(client, pkg) == [("1.0.0", True)]


@pytest.mark.parametrize(
    ("package", "branch", "version"),
    [
        ("%2E%2E", "major", "1.0.0"),  # ".." once the server decodes the path
        ("pkg", "%2E%2E", "1.0.0"),
        ("p" * 101, "major", "1.0.0"),
        ("pkg", "b" * 101, "1.0.0"),
        ("-pkg", "major", "1.0.0"),
        ("pkg", "major", "not-a-version"),
        ("pkg", "major", "1" * 65),
        ("pkg", "major", "%2E%2E"),
    ],
)
@pytest.mark.parametrize("action", ["release", "hold"])
def test_bad_names_and_versions_are_400(
    server: RunningServer, action: str, package: str, branch: str, version: str
) -> None:
    with server.client() as client:
        _status(_admin(client, action, package, version, branch=branch), 400)


def test_routes_are_documented(server: RunningServer) -> None:
    with server.client() as client:
        paths = client.get("/openapi.json").json()["paths"]
    for action in ("release", "hold"):
        route = paths[f"/api/v1/versions/{{package}}/{{branch}}/{{version}}/{action}"]["post"]
        assert {"200", "400", "401", "404"} <= set(route["responses"])
    upload_parameters = {p["name"] for p in paths["/upload"]["put"]["parameters"]}
    assert "hold" in upload_parameters


def test_without_admin_tokens_the_admin_api_is_disabled(sqlite_server: RunningServer, pkg: str) -> None:
    _publish(sqlite_server, pkg, "1.0.0", held=True)
    with sqlite_server.client() as client:
        for token in (ADMIN, PUBLISHER):
            error = _status(_admin(client, "release", pkg, "1.0.0", token=token), 401)["error"]
            assert "OTAKIT_ADMIN_TOKENS" in error
        assert _listed(client, pkg) == [("1.0.0", False)]


def test_admin_tokens_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().admin_tokens == []
    monkeypatch.setenv("OTAKIT_ADMIN_TOKENS", "a, b,,")
    assert load_settings().admin_tokens == ["a", "b"]  # comma-separated, like OTAKIT_UPLOAD_TOKENS
    monkeypatch.setenv("OTAKIT_UPLOAD_TOKENS", "p,b")
    with pytest.raises(ValidationError, match="both an upload token and an admin token"):
        load_settings()


def test_delete_removes_row_and_file_together(server: RunningServer, pkg: str) -> None:
    _publish(server, pkg, "1.0")
    _publish(server, pkg, "2.0")
    objects = server.files_dir / ".objects"
    before = len(list(objects.iterdir()))
    layout = server.files_dir / pkg / "major" / f"{pkg}-major-2.0.zip"
    assert layout.exists()
    with server.client() as client:
        for headers in ({}, {"Authorization": f"Bearer {PUBLISHER}"}):
            _status(client.delete(f"/api/v1/versions/{pkg}/major/2.0", headers=headers), 401)
        _status(client.delete(f"/api/v1/versions/{pkg}/major/9.0", headers=_bearer(ADMIN)), 404)
        _status(client.delete(f"/api/v1/versions/{pkg}/major/2.0.0", headers=_bearer(ADMIN)), 200)
        assert _listed(client, pkg) == [("1.0", True)]
        assert _latest(client, pkg) == "1.0"  # at once, cache or not
        _status(client.get(f"/otafiles/{pkg}/major/{pkg}-major-2.0.zip"), 404)
        _status(client.delete(f"/api/v1/versions/{pkg}/major/2.0", headers=_bearer(ADMIN)), 404)
    assert not layout.exists()
    assert len(list(objects.iterdir())) == before - 1
    _publish(server, pkg, "2.0")  # the version may be uploaded again, without force


def test_an_interrupted_delete_is_finished_by_fsck(tmp_path: Path, pkg: str) -> None:
    """A server killed after the delete's commit left the file and its upload entry: fsck removes both."""
    url = f"sqlite:///{tmp_path / 'ota.db'}"
    with run_server(tmp_path, url) as running:
        _publish(running, pkg, "1.0")
    files = tmp_path / "files"
    layout = files / pkg / "major" / f"{pkg}-major-1.0.zip"
    [object_id] = [p.name for p in (files / ".objects").iterdir()]
    with closing(sqlite3.connect(tmp_path / "ota.db")) as db, db:  # the commit happened
        db.execute("DELETE FROM ota WHERE name = ?", (pkg,))
    with closing(sqlite3.connect(tmp_path / "ota.db")) as db, db:  # the delete's entry, its lease run out
        db.execute(
            "INSERT INTO uploads (upload_id, owner, lease_until, name, branch, version, created)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                "deadbeef" * 4,
                "another-host/boot/1/1",
                time.time() - 1,
                pkg,
                "major",
                "1.0",
                time.time() - 100,
            ),
        )
    assert layout.exists()
    env = {**os.environ, "OTAKIT_DATABASE_URL": url, "OTAKIT_FILES_DIR": str(files)}
    done = subprocess.run(
        [sys.executable, "-m", "otakit", "server", "fsck"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "recovered 1 interrupted upload(s), removed 1 orphan object(s)" in done.stdout
    assert not layout.exists()
    assert not (files / ".objects" / object_id).exists()


def test_delete_is_refused_while_a_rollout_runs(tmp_path: Path, pkg: str) -> None:
    env = {"OTAKIT_ADMIN_TOKENS": ADMIN}
    with (
        run_server(tmp_path, f"sqlite:///{tmp_path / 'ota.db'}", env=env) as running,
        running.client() as client,
    ):
        _publish(running, pkg, "1.0")
        _publish(running, pkg, "2.0", held=True)
        body = {"package": pkg, "branch": "major", "version": "2.0"}
        created = client.post("/api/v1/rollouts", headers=_bearer(ADMIN), json=body)
        assert created.status_code == 201, created.text
        rollout = created.json()["rollout"]
        error = _status(client.delete(f"/api/v1/versions/{pkg}/major/2.0", headers=_bearer(ADMIN)), 409)[
            "error"
        ]
        assert "abort it to delete" in error
        _status(client.post(f"/api/v1/rollouts/{rollout['id']}/abort", headers=_bearer(ADMIN)), 200)
        _status(client.delete(f"/api/v1/versions/{pkg}/major/2.0", headers=_bearer(ADMIN)), 200)

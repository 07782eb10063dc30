"""``GET /metrics`` against real servers on loopback: the request counters by route template, the latency
histogram, upload and download bytes, the fleet's gauges, the token, and bounded label cardinality."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from otakit.server.app import create_app
from otakit.server.metrics import UNMATCHED
from otakit.server.routes.metrics import FLEET_TIMEOUT, fleet_now
from otakit.server.settings import ServerSettings
from tests.databases import mysql_connect, mysql_database
from tests.samples import content_for, dumps, make_zip
from tests.servers import ADMIN_HEADERS, ENROLL_HEADERS, FLEET_ENV, RunningServer, run_server

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]
PUBLISHER = {"Authorization": "Bearer test-token"}
# Methods outside HTTP's own that the HTTP parser still lets through: each is counted as "other".
WEBDAV = ["PROPFIND", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "PURGE", "REPORT", "SEARCH"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    workdir: Path = tmp_path_factory.mktemp("metrics")
    env = {**FLEET_ENV, "OTAKIT_DEVICE_APPROVAL": "manual"}
    with run_server(workdir, f"sqlite:///{workdir / 'ota.db'}", env=env) as running:
        yield running


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def parse(text: str) -> Series:
    series: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return series


def scrape(http: httpx.Client, **kwargs: Any) -> Series:
    response = http.get("/metrics", **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def value(series: Series, name: str, **labels: str) -> float:
    return series.get((name, frozenset(labels.items())), 0.0)


def requests_of(series: Series, route: str, method: str = "GET", status: str = "200") -> float:
    return value(series, "otakit_http_requests_total", route=route, method=method, status=status)


def eventually(http: httpx.Client, done: Callable[[Series], bool]) -> Series:
    """A scrape for which ``done`` holds: a request is counted as its answer ends, which may be just
    after the client has read it."""
    deadline = time.monotonic() + 5
    while True:
        series = scrape(http)
        if done(series) or time.monotonic() > deadline:
            return series
        time.sleep(0.02)


def publish(server: RunningServer, http: httpx.Client, package: str, version: str, **params: str) -> int:
    """Upload a version; the size of the request's body."""
    data = make_zip({"v.txt": f"{package} {version} ".encode() * 500})
    request = http.build_request(
        "PUT",
        "/upload",
        params=params,
        headers=PUBLISHER,
        files=[("content", (None, dumps(content_for(data, package, version)))),
               ("file", ("p.zip", data, "application/zip"))],
    )  # fmt: skip
    size = len(request.read())
    response = http.send(request)
    assert response.status_code == 200, response.text
    return size


def test_requests_are_counted_by_route_template_and_status(http: httpx.Client, pkg: str) -> None:
    before = scrape(http)
    for _ in range(3):
        assert http.get("/test").status_code == 200
    assert http.get("/latestVersion", params={"package": pkg, "branch": "major"}).status_code == 404
    assert http.get("/latestVersion", params={"package": "no/such", "branch": "major"}).status_code == 400
    assert http.get("/api/v1/devices/no-such-device", headers=ADMIN_HEADERS).status_code == 404
    assert http.get(f"/otafiles/{pkg}/major/{pkg}-major-1.0.zip").status_code == 404
    assert http.get("/console/static/console.css").status_code == 200
    assert http.get("/docs").status_code == 200
    assert http.get(f"/no/such/{pkg}").status_code == 404
    expected = [
        ("/test", "200", 3),
        ("/latestVersion", "404", 1),  # an app-level Request-only route
        ("/latestVersion", "400", 1),
        ("/api/v1/devices/{device_id}", "404", 1),  # an included router's
        ("/otafiles/{path}", "404", 1),
        ("/console/static/{path}", "200", 1),  # a mount
        ("/docs", "200", 1),  # a plain Starlette route
        (UNMATCHED, "404", 1),
    ]

    def counted(series: Series) -> bool:
        return all(
            requests_of(series, route, status=status) - requests_of(before, route, status=status) == n
            for route, status, n in expected
        )

    after = eventually(http, counted)
    assert counted(after), [(k, v) for k, v in after.items() if k[0] == "otakit_http_requests_total"]
    assert not any(pkg in str(labels) for _, labels in after), "a raw path became a label"
    # The histogram counts every request of a route and method, whatever the status.
    histogram = "otakit_http_request_duration_seconds"
    for route, n in (("/test", 3), ("/latestVersion", 2)):
        count = value(after, f"{histogram}_count", route=route, method="GET")
        assert count - value(before, f"{histogram}_count", route=route, method="GET") == n
        statuses = [s for (name, labels), s in after.items() if name == "otakit_http_requests_total"
                    and ("route", route) in labels and ("method", "GET") in labels]  # fmt: skip
        assert count == sum(statuses)
        assert value(after, f"{histogram}_bucket", route=route, method="GET", le="+Inf") == count
    buckets = {dict(labels)["le"] for name, labels in after if name == f"{histogram}_bucket"}
    assert {"0.0005", "10.0", "+Inf"} <= buckets
    # The process collector is on the app's registry.
    assert value(after, "process_resident_memory_bytes") > 0
    assert ("process_cpu_seconds_total", frozenset()) in after


def test_unknown_paths_add_one_series_not_one_each(http: httpx.Client) -> None:
    def labelled(series: Series) -> set[frozenset[tuple[str, str]]]:
        return {labels for name, labels in series if name == "otakit_http_requests_total"}

    http.get("/no/such/path")
    http.request("PROPFIND", "/test")
    before = eventually(http, lambda s: requests_of(s, "/test", "other", "405") > 0)
    for _ in range(100):
        assert http.get(f"/{uuid.uuid4().hex}/{uuid.uuid4().hex}").status_code == 404
        assert http.request(random.choice(WEBDAV), "/test").status_code == 405
    grown = requests_of(before, "/test", "other", "405") + 100
    after = eventually(http, lambda s: requests_of(s, "/test", "other", "405") >= grown)
    assert requests_of(after, UNMATCHED, status="404") - requests_of(before, UNMATCHED, status="404") == 100
    # The unmatched paths and the unknown methods each have their one series already: none is added
    # (but /metrics's own, as the first scrape is counted).
    assert labelled(after) - labelled(before) <= {
        frozenset({("route", "/metrics"), ("method", "GET"), ("status", "200")})
    }


def test_upload_and_download_bytes(server: RunningServer, http: httpx.Client, pkg: str) -> None:
    before = scrape(http)
    size = publish(server, http, pkg, "1.0")
    url = f"/otafiles/{pkg}/major/{pkg}-major-1.0.zip"
    whole = http.get(url)
    assert whole.status_code == 200
    part = http.get(url, headers={"Range": "bytes=10-99"})
    assert part.status_code == 206
    assert len(part.content) == 90
    assert http.head(url).status_code == 200  # no body: nothing counted
    etag = whole.headers["etag"]
    assert http.get(url, headers={"If-None-Match": etag}).status_code == 304
    sent = len(whole.content) + 90

    def delta(series: Series, name: str) -> float:
        return value(series, name) - value(before, name)

    after = eventually(http, lambda s: delta(s, "otakit_download_bytes_total") >= sent)
    assert delta(after, "otakit_upload_bytes_total") == size
    assert delta(after, "otakit_download_bytes_total") == sent
    assert requests_of(after, "/upload", "PUT") - requests_of(before, "/upload", "PUT") == 1
    assert (
        requests_of(after, "/otafiles/{path}", status="206")
        - requests_of(before, "/otafiles/{path}", status="206")
        == 1
    )


def test_fleet_gauges_match_the_api(server: RunningServer, http: httpx.Client, pkg: str) -> None:
    devices = [f"dev-{uuid.uuid4().hex[:10]}" for _ in range(3)]
    for device in devices:
        packages = [{"package": pkg, "branch": "major", "version": "1.0"}]
        response = http.post(
            "/api/v1/devices/register", headers=ENROLL_HEADERS, json={"device": device, "packages": packages}
        )
        assert response.status_code == 200, response.text
    assert http.post(f"/api/v1/devices/{devices[0]}/accept", headers=ADMIN_HEADERS).status_code == 200
    publish(server, http, pkg, "1.0")
    publish(server, http, pkg, "2.0", hold="1")
    started = http.post(
        "/api/v1/rollouts", headers=ADMIN_HEADERS, json={"package": pkg, "branch": "major", "version": "2.0"}
    )
    assert started.status_code == 201, started.text
    rollout = started.json()["rollout"]

    def api_total(**params: str) -> int:
        response = http.get("/api/v1/devices", headers=ADMIN_HEADERS, params={"limit": "1", **params})
        assert response.status_code == 200, response.text
        return int(response.json()["total"])

    def api_rollouts(state: str) -> int:
        response = http.get("/api/v1/rollouts", headers=ADMIN_HEADERS, params={"state": state})
        assert response.status_code == 200, response.text
        return len(response.json()["list"])

    def check() -> Series:
        series = scrape(http)
        assert value(series, "otakit_devices") == api_total()
        assert value(series, "otakit_devices_online") == api_total(online="true")
        assert value(series, "otakit_devices_pending") == api_total(state="pending")
        for state in ("running", "paused", "completed", "aborted"):
            assert value(series, "otakit_rollouts", state=state) == api_rollouts(state)
        return series

    series = check()
    assert value(series, "otakit_devices") >= 3
    assert value(series, "otakit_devices_pending") >= 2
    assert value(series, "otakit_rollouts", state="running") >= 1
    paused = http.post(f"/api/v1/rollouts/{rollout['id']}/pause", headers=ADMIN_HEADERS)
    assert paused.status_code == 200, paused.text
    after = check()
    assert (
        value(after, "otakit_rollouts", state="running")
        == value(series, "otakit_rollouts", state="running") - 1
    )
    assert (
        value(after, "otakit_rollouts", state="paused")
        == value(series, "otakit_rollouts", state="paused") + 1
    )
    # Devices register online (they were just seen), as the API counts them.
    assert value(after, "otakit_devices_online") >= 3
    assert value(after, "otakit_scrape_errors_total") == 0


def test_the_token_guards_metrics(tmp_path: Path) -> None:
    env = {"OTAKIT_METRICS_TOKEN": "scrape-token"}
    with (
        run_server(tmp_path, f"sqlite:///{tmp_path / 'ota.db'}", env=env) as guarded,
        guarded.client() as http,
    ):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic scrape-token"}):
            response = http.get("/metrics", headers=headers)
            assert response.status_code == 401
            assert response.json()["status"] == 401
        series = scrape(http, headers={"Authorization": "Bearer scrape-token"})
        assert requests_of(series, "/metrics", status="401") == 3
        schema = http.get("/openapi.json").json()
        assert schema["paths"]["/metrics"]["get"]["summary"]


def test_metrics_can_be_turned_off(tmp_path: Path) -> None:
    env = {"OTAKIT_METRICS_ENABLED": "false"}
    with run_server(tmp_path, f"sqlite:///{tmp_path / 'ota.db'}", env=env) as off, off.client() as http:
        assert http.get("/metrics").status_code == 404
        assert http.get("/test").status_code == 200


def fleet_series(series: Series) -> list[str]:
    return [name for name, _ in series if name.startswith(("otakit_devices", "otakit_rollouts"))]


@pytest.mark.mysql
def test_a_database_that_is_gone_leaves_the_fleet_out(tmp_path: Path) -> None:
    with mysql_database() as database, run_server(tmp_path, database.url) as server, server.client() as http:
        assert fleet_series(scrape(http))
        database.drop()  # the database goes away under the running server
        series = scrape(http)
        assert value(series, "otakit_scrape_errors_total") == 1
        assert not fleet_series(series)
        assert requests_of(series, "/metrics") >= 1  # the request metrics are still served


@pytest.mark.mysql
def test_a_database_that_hangs_leaves_the_fleet_out_in_time(tmp_path: Path) -> None:
    with mysql_database() as database, run_server(tmp_path, database.url) as server, server.client() as http:
        assert fleet_series(scrape(http))
        with closing(mysql_connect(database.url)) as other:
            with other.cursor() as cursor:
                cursor.execute("LOCK TABLES devices WRITE, device_totals WRITE")  # every count now waits
            started = time.monotonic()
            series = scrape(http)
            waited = time.monotonic() - started
            with other.cursor() as cursor:
                cursor.execute("UNLOCK TABLES")
        assert FLEET_TIMEOUT <= waited < FLEET_TIMEOUT + 3
        assert value(series, "otakit_scrape_errors_total") == 1
        assert not fleet_series(series)
        assert fleet_series(scrape(http))  # the database answers again: so does the fleet


@pytest.mark.anyio
async def test_fleet_now_counts_like_the_api(tmp_path: Path) -> None:
    from otakit.server.repository import open_repository

    repo = open_repository(f"sqlite:///{tmp_path / 'ota.db'}")
    await repo.connect()
    try:
        await repo.upgrade()
        fleet = await fleet_now(repo, 60, time.time())
    finally:
        await repo.close()
    assert (fleet.devices, fleet.online, fleet.pending) == (0, 0, 0)
    assert fleet.rollouts == {"running": 0, "paused": 0, "completed": 0, "aborted": 0}


def test_two_apps_in_one_process_have_their_own_registries(tmp_path: Path) -> None:
    settings = ServerSettings(database_url=f"sqlite:///{tmp_path / 'a.db'}", files_dir=tmp_path / "files")
    first, second = create_app(settings), create_app(settings)
    assert first.state.metrics.registry is not second.state.metrics.registry
    first.state.metrics.observe("/test", "GET", 200, 0.001)
    assert requests_of(parse(second.state.metrics.render(None).decode()), "/test") == 0

"""The daemon's fleet client end to end: a real server with the devices API, real daemon subprocesses.

Each test has its own device id. The module's server heartbeats every second, so inventories and
re-enrollment show within a few seconds; outage tests run their own server on a fixed port and stop
it and start it again on the same database.
"""

from __future__ import annotations

import json
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import pytest

from otakit.daemon.fetch import Fetcher
from otakit.device_config import parse_device_config
from otakit.errors import ValidationError
from tests.daemon_api import Api
from tests.daemon_packages import Publisher
from tests.daemons import run_daemon, write_config
from tests.samples import content_for
from tests.servers import FLEET_ENV, RunningServer, free_port, run_server

ENROLL = "enroll-token"
ADMIN = "admin-token"
HEARTBEAT_ENV = {**FLEET_ENV, "OTAKIT_HEARTBEAT_SECONDS": "1"}
_T = TypeVar("_T")


@contextmanager
def fleet_server(workdir: Path, port: int | None = None) -> Iterator[RunningServer]:
    workdir.mkdir(parents=True, exist_ok=True)
    with run_server(workdir, f"sqlite:///{workdir / 'ota.db'}", port=port, env=HEARTBEAT_ENV) as server:
        yield server


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The module's fleet server; also the server the packages come from."""
    with fleet_server(tmp_path_factory.mktemp("fleet")) as server:
        yield server


@pytest.fixture
def publisher(fleet: RunningServer, tmp_path: Path) -> Iterator[Publisher]:
    publisher = Publisher(fleet, tmp_path / "publish")
    yield publisher
    publisher.close()


@pytest.fixture
def device_id() -> str:
    return f"dev-{uuid.uuid4().hex[:10]}"


def fleet_config(folder: Path, device_id: str, registry: str, **settings: Any) -> Path:
    return write_config(folder, device=device_id, registry=registry, enroll_token=ENROLL, **settings)


def admin_get(server: RunningServer, device_id: str) -> dict[str, Any] | None:
    """The device as the operator sees it, or None when the server does not know it (or is down)."""
    try:
        response = httpx.get(
            f"{server.url}/api/v1/devices/{device_id}",
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=5,
        )
    except httpx.TransportError:
        return None
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    device: dict[str, Any] = response.json()["device"]
    return device


def wait_for(
    what: str, probe: Callable[[], _T | None], timeout: float = 15, log: Callable[[], str] = str
) -> _T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found is not None and found is not False:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s\n{log()}")


def enrolled(server: RunningServer, device_id: str, log: Callable[[], str] = str) -> dict[str, Any]:
    return wait_for(f"{device_id} enrolled", lambda: admin_get(server, device_id), log=log)


def state_file(folder: Path) -> Path:
    return folder / ".otakit-state" / "registry.json"


def job_reports(server: RunningServer, device_id: str, job_id: str) -> list[dict[str, Any]]:
    """The server's reports of one job, in the order they arrived."""
    device = admin_get(server, device_id) or {"reports": []}
    return [report for report in reversed(device["reports"]) if report["id"] == job_id]


def final_report(server: RunningServer, device_id: str, job_id: str) -> list[dict[str, Any]] | None:
    reports = job_reports(server, device_id, job_id)
    return reports if reports and reports[-1]["state"] in ("succeeded", "failed", "rolled_back") else None


def assert_in_order(reports: list[dict[str, Any]], final: str = "succeeded") -> None:
    assert reports[-1]["state"] == final, reports
    assert reports[-1]["progress"] == 100 or final != "succeeded"
    assert all(report["state"] == "running" for report in reports[:-1]), reports
    progress = [report["progress"] for report in reports]
    assert progress == sorted(progress), reports


# -- enrollment --------------------------------------------------------------------------------------


def test_enrolls_on_start_with_its_inventory(
    fleet: RunningServer, publisher: Publisher, tmp_path: Path, device_id: str, pkg: str
) -> None:
    publisher.publish(pkg, "1.0.0")
    folder = tmp_path / "device"
    config = write_config(folder, device=device_id)  # no registry yet: installs as before
    with run_daemon(config) as daemon:
        api = Api(daemon)
        api.install(publisher, pkg)
        api.close()
        assert admin_get(fleet, device_id) is None
    settings = json.loads(config.read_text())
    settings |= {
        "registry": fleet.url,
        "enroll_token": ENROLL,
        "tags": ["line-3", "beta"],
        "attributes": {"site": "Lyon", "hw": "rev-b"},
    }
    config.write_text(json.dumps(settings))
    with run_daemon(config) as daemon:
        device = enrolled(fleet, device_id, daemon.log_text)
        assert "ignoring unknown key" not in daemon.log_text()
    assert device["description"] == "a device in a test"
    assert sorted(device["tags"]) == ["beta", "line-3"]
    assert device["attributes"] == {"site": "Lyon", "hw": "rev-b"}
    assert device["packages"] == [{"package": pkg, "branch": "major", "version": "1.0.0"}]
    assert device["state"] == "accepted"


def test_the_token_is_kept_private_and_never_logged(
    fleet: RunningServer, tmp_path: Path, device_id: str
) -> None:
    folder = tmp_path / "device"
    with run_daemon(fleet_config(folder, device_id, fleet.url)) as daemon:
        enrolled(fleet, device_id, daemon.log_text)
        path = wait_for("the token file", lambda: state_file(folder).exists() and state_file(folder))
        time.sleep(1.5)  # a heartbeat or two with the token
        log = daemon.log_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = json.loads(path.read_text())["token"]
    assert len(token) >= 32
    assert token not in log
    assert "enrolled at" in log
    # The token is the device's: its heartbeat route takes it.
    response = httpx.post(
        f"{fleet.url}/api/v1/devices/{device_id}/heartbeat", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.text


def test_a_restart_keeps_the_token(fleet: RunningServer, tmp_path: Path, device_id: str) -> None:
    folder = tmp_path / "device"
    config = fleet_config(folder, device_id, fleet.url)
    with run_daemon(config) as daemon:
        enrolled(fleet, device_id, daemon.log_text)
        wait_for("the token file", lambda: state_file(folder).exists())
    token = json.loads(state_file(folder).read_text())["token"]
    with run_daemon(config) as daemon:
        time.sleep(1.5)
        log = daemon.log_text()
    assert "is taken" not in log  # it did not register again
    assert json.loads(state_file(folder).read_text())["token"] == token


def test_a_server_down_delays_nothing_and_enrollment_follows(tmp_path: Path, device_id: str) -> None:
    port = free_port()
    folder = tmp_path / "device"
    with run_daemon(fleet_config(folder, device_id, f"http://127.0.0.1:{port}")) as daemon:
        api = Api(daemon)
        started = time.monotonic()
        assert api.get("/info")["device"] == device_id
        api.run_job("POST", "/check")
        assert time.monotonic() - started < 2
        with fleet_server(tmp_path / "server", port) as server:
            enrolled(server, device_id, daemon.log_text)
        api.close()
        assert "cannot enroll" in daemon.log_text()


def test_an_id_taken_is_logged_clearly(fleet: RunningServer, tmp_path: Path, device_id: str) -> None:
    with run_daemon(fleet_config(tmp_path / "first", device_id, fleet.url)) as first:
        enrolled(fleet, device_id, first.log_text)
        with run_daemon(fleet_config(tmp_path / "second", device_id, fleet.url)) as second:
            wait_for("the 409 logged", lambda: "is taken" in second.log_text(), log=second.log_text)
            assert f"otakit device delete {device_id}" in second.log_text()
            api = Api(second)
            assert api.get("/info")["device"] == device_id
            api.close()


def test_a_wrong_enroll_token_is_logged(fleet: RunningServer, tmp_path: Path, device_id: str) -> None:
    config = write_config(tmp_path / "device", device=device_id, registry=fleet.url, enroll_token="wrong")
    with run_daemon(config) as daemon:
        wait_for(
            "the 401 logged", lambda: "refused the enroll_token" in daemon.log_text(), log=daemon.log_text
        )
    assert admin_get(fleet, device_id) is None
    assert "wrong" not in daemon.log_text().split("refused the enroll_token")[1].split("\n")[0]


def test_a_deleted_device_enrolls_again(fleet: RunningServer, tmp_path: Path, device_id: str) -> None:
    folder = tmp_path / "device"
    with run_daemon(fleet_config(folder, device_id, fleet.url)) as daemon:
        first = enrolled(fleet, device_id, daemon.log_text)
        wait_for("the token file", lambda: state_file(folder).exists())
        old = json.loads(state_file(folder).read_text())["token"]
        response = httpx.delete(
            f"{fleet.url}/api/v1/devices/{device_id}", headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert response.status_code == 200, response.text
        again = enrolled(fleet, device_id, daemon.log_text)
        assert again["registered"] > first["registered"]
        new = wait_for("a new token", lambda: json.loads(state_file(folder).read_text())["token"] != old)
        assert new
        assert "enrolling again" in daemon.log_text()


# -- heartbeats --------------------------------------------------------------------------------------


def test_an_install_shows_in_the_inventory_after_a_heartbeat(
    fleet: RunningServer, publisher: Publisher, tmp_path: Path, device_id: str, pkg: str
) -> None:
    publisher.publish(pkg, "1.0.0")
    publisher.publish(pkg, "2.0.0")
    with run_daemon(fleet_config(tmp_path / "device", device_id, fleet.url)) as daemon:
        assert enrolled(fleet, device_id, daemon.log_text)["packages"] == []
        api = Api(daemon)
        api.install(publisher, pkg, version="1.0.0")

        def runs(version: str) -> bool:
            device = admin_get(fleet, device_id) or {}
            return device.get("packages") == [{"package": pkg, "branch": "major", "version": version}]

        wait_for("1.0.0 in the inventory", lambda: runs("1.0.0"), log=daemon.log_text)
        api.run_job("POST", f"/packages/{pkg}/update")
        wait_for("2.0.0 in the inventory", lambda: runs("2.0.0"), log=daemon.log_text)
        api.close()


# -- reports -----------------------------------------------------------------------------------------


def test_an_install_job_is_reported(
    fleet: RunningServer, publisher: Publisher, tmp_path: Path, device_id: str, pkg: str
) -> None:
    publisher.publish(pkg, "1.0.0", files={"big.bin": bytes(range(256)) * 40_000})  # 10 MB: progress
    with run_daemon(fleet_config(tmp_path / "device", device_id, fleet.url)) as daemon:
        enrolled(fleet, device_id, daemon.log_text)
        api = Api(daemon)
        job = api.install(publisher, pkg)
        api.close()
        reports = wait_for(
            "the final report", lambda: final_report(fleet, device_id, job["id"]), log=daemon.log_text
        )
    assert_in_order(reports)
    assert reports[-1]["to_version"] == "1.0.0"
    assert reports[-1]["log"] == job["log"]
    steps = [report["step"] for report in reports]
    assert "download" in steps
    assert "AfterUpdate" in steps or "record" in steps
    device = admin_get(fleet, device_id)
    assert device is not None
    assert device["jobs"][pkg]["state"] == "succeeded"
    assert device["jobs"][pkg]["id"] == job["id"]


def test_a_failed_job_is_reported_failed(
    fleet: RunningServer, publisher: Publisher, tmp_path: Path, device_id: str, pkg: str
) -> None:
    publisher.publish(pkg, "1.0.0", before="exit 3")
    with run_daemon(fleet_config(tmp_path / "device", device_id, fleet.url)) as daemon:
        api = Api(daemon)
        job = api.install(publisher, pkg, state="failed")
        api.close()
        reports = wait_for(
            "the final report", lambda: final_report(fleet, device_id, job["id"]), log=daemon.log_text
        )
    assert_in_order(reports, "failed")
    assert reports[-1]["error"] == job["error"]


def test_reports_made_while_the_server_is_down_arrive_in_order_after_a_restart(
    publisher: Publisher, tmp_path: Path, device_id: str, pkg: str
) -> None:
    """The packages come from the module's server; the fleet server is this test's, and goes away."""
    publisher.publish(pkg, "1.0.0", files={"big.bin": bytes(range(256)) * 40_000})
    port = free_port()
    workdir = tmp_path / "fleet"
    folder = tmp_path / "device"
    config = fleet_config(folder, device_id, f"http://127.0.0.1:{port}")
    with fleet_server(workdir, port) as server, run_daemon(config) as daemon:
        enrolled(server, device_id, daemon.log_text)
    outbox = folder / ".otakit-state" / "outbox"
    with run_daemon(config) as daemon:  # the server is down from here
        api = Api(daemon)
        install = api.install(publisher, pkg)
        check = api.run_job("POST", "/check")
        api.close()
    waiting = [json.loads(path.read_text()) for path in sorted(outbox.iterdir())]
    assert len(waiting) >= 3
    assert waiting[-1]["id"] == check["id"]
    with run_daemon(config) as daemon:  # a daemon restarted: the outbox is still there
        time.sleep(0.5)
        with fleet_server(workdir, port) as server:
            wait_for("the outbox delivered", lambda: not any(outbox.iterdir()), log=daemon.log_text)
            installed = job_reports(server, device_id, install["id"])
            checked = job_reports(server, device_id, check["id"])
            device = admin_get(server, device_id)
    assert_in_order(installed)
    assert checked[-1]["state"] == "succeeded"
    assert device is not None

    def brief(report: dict[str, Any]) -> tuple[str, str, str, int]:
        return report["id"], report["state"], report["step"], report["progress"]

    # Every report made while the server was away arrived, once each, in the order made.
    assert [brief(report) for report in reversed(device["reports"])] == [brief(report) for report in waiting]
    assert device["jobs"][pkg]["state"] == "succeeded"


# -- device= on /latestVersion -------------------------------------------------------------------------


class RecordingProxy:
    """Forwards every request to ``upstream`` and records each request line it saw."""

    def __init__(self, upstream: str) -> None:
        self.seen: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                proxy.seen.append(f"{self.command} {self.path}")
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                response = httpx.request(self.command, upstream + self.path, content=body, headers=headers)
                self.send_response(response.status_code)
                for key, value in response.headers.items():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(response.content)))
                self.end_headers()
                self.wfile.write(response.content)

            do_GET = do_POST = do_PUT = do_DELETE = _forward

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05})

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def test_device_is_named_to_the_registry_only(
    fleet: RunningServer, publisher: Publisher, tmp_path: Path, device_id: str, pkg: str
) -> None:
    publisher.publish(pkg, "1.0.0")
    with RecordingProxy(fleet.url) as proxy:
        config = fleet_config(tmp_path / "device", device_id, proxy.url)
        with run_daemon(config) as daemon:
            enrolled(fleet, device_id, daemon.log_text)
            api = Api(daemon)
            api.install(publisher, pkg, remote=proxy.url + "/")  # the registry, with a trailing slash
            latest = api.get(f"/packages/{pkg}/latest")
            api.close()
    assert latest["latest"]["version"] == "1.0.0"
    asked = [line for line in proxy.seen if line.startswith("GET /latestVersion")]
    assert len(asked) >= 2
    assert all(f"device={device_id}" in line for line in asked), asked


def test_fetcher_adds_device_for_the_registry_only() -> None:
    """The unit view of the same: which queries carry device=, and the ETag still answers 304."""
    seen: list[httpx.URL] = []
    content = content_for(b"zip", "app", "1.0.0", remote="http://fleet.test/")

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        if request.headers.get("if-none-match") == '"e1"':
            return httpx.Response(304, headers={"ETag": '"e1"'})
        return httpx.Response(200, json={"status": 200, "content.json": content}, headers={"ETag": '"e1"'})

    async def main() -> None:
        async with Fetcher(retries=0, transport=httpx.MockTransport(answer)) as fetcher:
            fetcher.identify("http://fleet.test/", "gw-1")
            found, etag = await fetcher.latest("http://fleet.test", "app", "major")
            assert found is not None
            assert etag == '"e1"'
            assert await fetcher.latest("http://fleet.test/", "app", "major", etag) == (None, '"e1"')
            await fetcher.latest("http://other.test/", "app", "major")

    anyio.run(main)
    assert [url.params.get("device") for url in seen] == ["gw-1", "gw-1", None]
    assert all(url.params["package"] == "app" for url in seen)


# -- the config keys ---------------------------------------------------------------------------------


def test_fleet_keys_are_known_and_kept() -> None:
    raw = {
        "device": "gw-1",
        "token": "t",
        "registry": "https://ota.example.com/",
        "enroll_token": "e",
        "tags": ["line-3"],
        "attributes": {"site": "Lyon"},
    }
    config = parse_device_config(json.dumps(raw))
    assert config.unknown_keys() == []
    assert (config.registry, config.enroll_token, config.tags, config.attributes) == (
        "https://ota.example.com/",
        "e",
        ["line-3"],
        {"site": "Lyon"},
    )
    written = config.to_json()
    assert {key: written[key] for key in raw} == raw
    assert parse_device_config(json.dumps({"token": "t", "registry": ""})).registry is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"registry": "ftp://ota.example.com"}, "registry"),
        ({"registry": "not a url"}, "registry"),
        ({"registry": "https://ota.example.com", "device": ""}, "device is required"),
        ({"registry": "https://ota.example.com", "device": "a/b"}, "invalid device"),
        ({"tags": ["ok", "../up"]}, "invalid tag"),
        ({"tags": "line-3"}, "tags"),
        ({"attributes": {"a b": "x"}}, "invalid attribute name"),
        ({"attributes": {"site": 3}}, "attributes"),
        ({"attributes": {"site": "x" * 1001}}, "over 1000"),
    ],
)
def test_invalid_fleet_keys_name_the_field(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_device_config(json.dumps({"token": "t", "device": "gw-1", **settings}))

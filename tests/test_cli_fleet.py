"""The operator's CLI (`otakit devices`, `device`, `rollout`, `release`, `hold`, `delete`) against a real
server on loopback: every effect is checked through the API, every error is one line and exit 1.

The server approves devices by hand, so that enrolled devices are `pending` until `device accept`."""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from otakit.cli import fleet
from otakit.cli.main import app
from tests.api_client import upload
from tests.samples import content_for, make_zip
from tests.servers import ADMIN_HEADERS, ENROLL_HEADERS, FLEET_ENV, RunningServer, free_port, run_server
from tests.terminal import on_a_terminal

runner = CliRunner()
OTAKIT = str(Path(sys.executable).with_name("otakit"))  # the installed entry point
ADMIN, ENROLL = ADMIN_HEADERS, ENROLL_HEADERS
MANUAL_FLEET_ENV = {**FLEET_ENV, "OTAKIT_DEVICE_APPROVAL": "manual"}
DEVICES = "/api/v1/devices"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    workdir = tmp_path_factory.mktemp("fleet-cli")
    with run_server(workdir, f"sqlite:///{workdir / 'ota.db'}", env=MANUAL_FLEET_ENV) as running:
        yield running


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture
def tag() -> str:
    """A tag (and id prefix) no other test uses: filtering by it isolates a test's devices."""
    return f"t{uuid.uuid4().hex[:10]}"


def run(server: RunningServer, *args: str, **env: str | None) -> tuple[int, str, str]:
    """The CLI in-process, with the server and admin token from the environment unless overridden."""
    full_env: dict[str, str | None] = {
        "OTAKIT_SERVER": server.url,
        "OTAKIT_ADMIN_TOKEN": "admin-token",
        "COLUMNS": "200",
        **env,
    }
    result = runner.invoke(app, list(args), env=full_env)
    return result.exit_code, result.stdout, result.stderr


def run_json(server: RunningServer, *args: str) -> Any:
    code, stdout, stderr = run(server, *args, "--json")
    assert code == 0, stderr
    return json.loads(stdout)


def one_line_error(code: int, stdout: str, stderr: str) -> str:
    assert code == 1, (stdout, stderr)
    assert stdout == ""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("otakit: error: "), stderr
    return lines[0]


def enroll(http: httpx.Client, device: str, **body: Any) -> str:
    response = http.post(f"{DEVICES}/register", headers=ENROLL, json={"device": device, **body})
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def device_of(http: httpx.Client, device: str) -> httpx.Response:
    return http.get(f"{DEVICES}/{device}", headers=ADMIN)


def publish(server: RunningServer, package: str, version: str, *, hold: bool = False) -> None:
    data = make_zip({"v.txt": f"{package} {version}".encode()})
    response = upload(
        server, content_for(data, package, version), data, params={"hold": "1"} if hold else None
    )
    assert response.status_code == 200, response.text


def latest(http: httpx.Client, package: str) -> str | None:
    response = http.get("/latestVersion", params={"package": package, "branch": "major"})
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return str(response.json()["content.json"]["version"])


def ids(listed: list[dict[str, Any]]) -> list[str]:
    return [device["id"] for device in listed]


def app_package(version: str, branch: str = "major") -> dict[str, str]:
    return {"package": "app", "branch": branch, "version": version}


@pytest.fixture
def three(http: httpx.Client, tag: str) -> list[str]:
    """Three devices with ``tag``: a (accepted, app 1.0, tag eu), b (app 2.0), c (tool 1.0 on beta)."""
    a, b, c = f"{tag}-a", f"{tag}-b", f"{tag}-c"
    enroll(http, a, tags=[tag, "eu"], packages=[app_package("1.0")])
    enroll(http, b, tags=[tag], packages=[app_package("2.0")])
    enroll(http, c, tags=[tag], packages=[{"package": "tool", "branch": "beta", "version": "1.0"}])
    assert http.post(f"{DEVICES}/{a}/accept", headers=ADMIN).status_code == 200
    return [a, b, c]


def test_devices_listing_and_filters(server: RunningServer, three: list[str], tag: str) -> None:
    a, b, c = three
    assert ids(run_json(server, "devices", "--tag", tag)) == [a, b, c]
    assert ids(run_json(server, "devices", "--tag", tag, "--package", "app")) == [a, b]
    assert ids(run_json(server, "devices", "--tag", tag, "-p", "app", "--version", "2.0.0")) == [b]
    assert ids(run_json(server, "devices", "--tag", tag, "--branch", "beta")) == [c]
    assert ids(run_json(server, "devices", "--tag", tag, "--state", "pending")) == [b, c]
    assert ids(run_json(server, "devices", "--tag", tag, "--state", "accepted")) == [a]
    assert ids(run_json(server, "devices", "--tag", tag, "--online")) == [a, b, c]  # just enrolled
    assert run_json(server, "devices", "--tag", tag, "--offline") == []
    assert ids(run_json(server, "devices", "--tag", "eu")) == [a]  # "eu" may be another test's too
    listed = run_json(server, "devices", "--tag", tag, "--limit", "2")
    assert ids(listed) == [a, b]
    assert listed[0]["state"] == "accepted"
    assert listed[0]["packages"] == [app_package("1.0")]
    assert set(listed[0]["tags"]) == {tag, "eu"}

    code, stdout, stderr = run(server, "devices", "--tag", tag)
    assert code == 0, stderr
    for device in three:
        assert device in stdout
    assert "pending" in stdout
    assert "accepted" in stdout
    assert "app 1.0 (major)" in stdout
    assert "3 device(s)" in stdout
    code, stdout, _ = run(server, "devices", "--tag", tag, "--limit", "1")
    assert "1 of 3 devices" in stdout


def test_devices_follows_the_pages(
    server: RunningServer, three: list[str], tag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fleet, "_PAGE", 2)  # the server's pages are 1000 devices; make them small
    assert ids(run_json(server, "devices", "--tag", tag)) == three
    assert ids(run_json(server, "devices", "--tag", tag, "--limit", "3")) == three
    monkeypatch.setattr(fleet, "_PAGE", 1)
    assert ids(run_json(server, "devices", "--tag", tag)) == three
    assert ids(run_json(server, "devices", "--tag", tag, "--limit", "2")) == three[:2]


def test_device_show(server: RunningServer, http: httpx.Client, tag: str) -> None:
    device = f"{tag}-shown"
    token = enroll(
        http,
        device,
        description="[red]line 3[/red] \x1b[31mred",  # device-supplied: neither markup nor escapes
        tags=[tag],
        attributes={"hw": "rev2"},
        packages=[app_package("1.0")],
    )
    report = {"id": "job-1", "package": "app", "action": "update", "state": "failed", "step": "verify",
              "from_version": "1.0", "to_version": "2.0", "progress": 40, "error": "sha256 mismatch\nmore",
              "log": []}  # fmt: skip
    posted = http.post(
        f"{DEVICES}/{device}/reports", headers={"Authorization": f"Bearer {token}"}, json=report
    )
    assert posted.status_code == 200, posted.text

    shown = run_json(server, "device", device)
    assert shown == device_of(http, device).json()["device"]
    assert shown["id"] == device
    assert shown["state"] == "pending"
    assert [r["id"] for r in shown["reports"]] == ["job-1"]
    assert shown["jobs"]["app"]["state"] == "failed"
    assert run_json(server, "device", "show", device) == shown

    code, stdout, stderr = run(server, "device", device)
    assert code == 0, stderr
    assert device in stdout
    assert "pending" in stdout
    assert "hw=rev2" in stdout
    assert "[red]line 3[/red]" in stdout  # shown as it is, not read as Rich markup
    assert "\x1b" not in stdout
    assert "latest job per package" in stdout
    assert "last reports" in stdout
    assert "1.0 → 2.0" in stdout
    assert "sha256 mismatch" in stdout
    assert "more" not in stdout  # an error's first line only


def test_device_accept_pin_unpin_delete(server: RunningServer, http: httpx.Client, tag: str) -> None:
    device = f"{tag}-acted"
    enroll(http, device, packages=[app_package("1.0")])
    assert device_of(http, device).json()["device"]["state"] == "pending"

    code, stdout, stderr = run(server, "device", "accept", device)
    assert (code, stderr) == (0, "")
    assert stdout == f"accepted device {device}\n"
    assert device_of(http, device).json()["device"]["state"] == "accepted"

    assert run(server, "device", "pin", device)[0] == 0
    assert device_of(http, device).json()["device"]["pinned"] is True
    assert run(server, "device", "unpin", device)[0] == 0
    assert device_of(http, device).json()["device"]["pinned"] is False

    code, stdout, _ = run(server, "device", "delete", device)
    assert code == 0
    assert "deleted" in stdout
    assert device_of(http, device).status_code == 404
    enroll(http, device)  # the id may enroll again


def test_a_device_named_like_a_subcommand(server: RunningServer, http: httpx.Client) -> None:
    if device_of(http, "accept").status_code == 404:
        enroll(http, "accept")
    assert run_json(server, "device", "show", "accept")["id"] == "accept"
    assert run(server, "device", "accept", "accept")[0] == 0
    assert device_of(http, "accept").json()["device"]["state"] == "accepted"
    code, _, stderr = run(server, "device", "accept")  # the subcommand, missing its ID
    assert code == 2
    assert "Missing argument" in stderr


def test_rollout_lifecycle(server: RunningServer, http: httpx.Client, tag: str) -> None:
    package = f"pkg-{tag}"
    publish(server, package, "0.9")
    publish(server, package, "1.0", hold=True)
    rollout = run_json(
        server, "rollout", "start", package, "major", "1.0", "--phases", "10,50,100",
        "--max-failure-rate", "0.2", "--min-reports", "5", "--phase-seconds", "3600",
        "--tag", "eu", "--tag", tag,
    )  # fmt: skip
    expected = {"package": package, "branch": "major", "version": "1.0", "phases": [10, 50, 100],
                "phase": 0, "percent": 10, "state": "running", "max_failure_rate": 0.2, "min_reports": 5,
                "phase_seconds": 3600, "tags": ["eu", tag], "paused_reason": None}  # fmt: skip
    assert {key: rollout[key] for key in expected} == expected
    number = str(rollout["id"])

    listed = run_json(server, "rollout", "list", "--package", package)
    assert [r["id"] for r in listed] == [rollout["id"]]
    assert run_json(server, "rollout", "list", "--package", package, "--state", "paused") == []
    assert run_json(server, "rollout", "list", "--package", package, "--branch", "beta") == []
    assert run_json(server, "rollout", "show", number) == rollout

    paused = run_json(server, "rollout", "pause", number)
    assert (paused["state"], paused["paused_reason"]) == ("paused", "operator")
    assert [r["id"] for r in run_json(server, "rollout", "list", "-p", package, "--state", "paused")] == [
        rollout["id"]
    ]
    code, stdout, stderr = run(server, "rollout", "list", "--package", package)
    assert code == 0, stderr
    assert "paused" in stdout
    assert "operator" in stdout
    assert "10 % (1/3)" in stdout
    assert "0 / 0 / 0" in stdout

    assert run_json(server, "rollout", "resume", number)["state"] == "running"
    advanced = run_json(server, "rollout", "advance", number)
    assert (advanced["state"], advanced["phase"], advanced["percent"]) == ("running", 1, 50)
    code, stdout, _ = run(server, "rollout", "show", number)
    assert code == 0
    assert "50 % (phase 2/3)" in stdout
    assert "running" in stdout
    assert "0 ok, 0 failed, 0 in progress" in stdout

    code, stdout, _ = run(server, "rollout", "abort", number)
    assert code == 0
    assert "aborted" in stdout
    assert http.get(f"/api/v1/rollouts/{number}", headers=ADMIN).json()["rollout"]["state"] == "aborted"
    assert latest(http, package) == "0.9"  # the version stays held

    error = one_line_error(*run(server, "rollout", "advance", number))
    assert "aborted" in error or "409" in error or "not" in error
    assert http.get(f"/api/v1/rollouts/{number}", headers=ADMIN).json()["rollout"]["state"] == "aborted"


def test_rollout_to_the_end_releases(server: RunningServer, http: httpx.Client, tag: str) -> None:
    package = f"pkg-{tag}"
    publish(server, package, "2.0", hold=True)
    rollout = run_json(server, "rollout", "start", package, "major", "2.0", "--phases", "50,100")
    assert (rollout["percent"], rollout["max_failure_rate"], rollout["min_reports"]) == (50, 0.05, 20)
    assert latest(http, package) is None
    done = run_json(server, "rollout", "advance", str(rollout["id"]))
    assert (done["state"], done["percent"]) == ("completed", 100)
    assert latest(http, package) == "2.0"


def test_release_and_hold(server: RunningServer, http: httpx.Client, tag: str) -> None:
    package = f"pkg-{tag}"
    publish(server, package, "1.0")
    publish(server, package, "1.1", hold=True)
    assert latest(http, package) == "1.0"

    code, stdout, stderr = run(server, "release", package, "major", "1.1")
    assert (code, stderr) == (0, "")
    assert f"released {package} 1.1" in stdout
    assert latest(http, package) == "1.1"
    assert run(server, "hold", package, "major", "1.1.0")[0] == 0  # PEP 440: 1.1.0 is 1.1
    assert latest(http, package) == "1.0"

    assert "no version" in one_line_error(*run(server, "release", package, "major", "9.9"))
    publish(server, package, "1.2", hold=True)
    rollout = run_json(server, "rollout", "start", package, "major", "1.2")
    error = one_line_error(*run(server, "hold", package, "major", "1.2"))
    assert "rollout" in error
    run_json(server, "rollout", "abort", str(rollout["id"]))


def test_delete_version(server: RunningServer, http: httpx.Client, tag: str) -> None:
    package = f"pkg-{tag}"
    publish(server, package, "1.0")
    publish(server, package, "2.0", hold=True)
    code, stdout, stderr = run(server, "delete", package, "major", "1.0")
    if code == 1 and ("405" in stderr or "Method Not Allowed" in stderr):
        pytest.skip("the server has no DELETE /api/v1/versions/… route yet")
    assert (code, stderr) == (0, ""), stderr
    assert f"deleted {package} 1.0" in stdout
    listed = http.get("/getVersion", params={"package": package}).json()["list"]
    assert [entry["version"] for entry in listed] == ["2.0"]
    assert latest(http, package) is None

    assert "no version" in one_line_error(*run(server, "delete", package, "major", "1.0"))
    rollout = run_json(server, "rollout", "start", package, "major", "2.0")
    assert "rollout" in one_line_error(*run(server, "delete", package, "major", "2.0"))
    run_json(server, "rollout", "abort", str(rollout["id"]))


def test_errors_are_one_line(server: RunningServer, http: httpx.Client, tag: str) -> None:
    error = one_line_error(*run(server, "devices", OTAKIT_ADMIN_TOKEN="wrong"))
    assert "admin token is not valid" in error
    error = one_line_error(*run(server, "devices", "--token", "test-token"))  # a publisher token
    assert "admin token is not valid" in error
    error = one_line_error(*run(server, "device", "pin", "x", OTAKIT_ADMIN_TOKEN=None))
    assert "--token" in error
    assert "OTAKIT_ADMIN_TOKEN" in error
    error = one_line_error(*run(server, "devices", OTAKIT_SERVER=None))
    assert "--server" in error
    assert "OTAKIT_SERVER" in error

    assert f"no device {tag}-none" in one_line_error(*run(server, "device", f"{tag}-none"))
    assert "no device" in one_line_error(*run(server, "device", "delete", f"{tag}-none"))
    assert "invalid device" in one_line_error(*run(server, "device", "accept", "../x"))
    assert "no rollout" in one_line_error(*run(server, "rollout", "show", "999999"))
    assert "no version" in one_line_error(*run(server, "rollout", "start", f"pkg-{tag}", "major", "1.0"))

    package = f"pkg-{tag}"
    publish(server, package, "1.0", hold=True)
    one_line_error(*run(server, "rollout", "start", package, "major", "1.0", "--phases", "50,10,100"))  # 400
    assert "--phases" in one_line_error(
        *run(server, "rollout", "start", package, "major", "1.0", "--phases", "a")
    )
    publish(server, package, "0.5")
    assert "released already" in one_line_error(*run(server, "rollout", "start", package, "major", "0.5"))
    assert "invalid version" in one_line_error(*run(server, "release", package, "major", "not-a-version"))
    assert http.get("/api/v1/rollouts", headers=ADMIN, params={"package": package}).json()["list"] == []

    down = f"http://127.0.0.1:{free_port()}"
    for args in (["devices"], ["rollout", "advance", "1"], ["release", package, "major", "1.0"]):
        assert "cannot reach the server" in one_line_error(*run(server, *args, OTAKIT_SERVER=down))


def test_tableson_a_terminal(server: RunningServer, three: list[str], tag: str) -> None:
    env = os.environ | {
        "OTAKIT_SERVER": server.url,
        "OTAKIT_ADMIN_TOKEN": "admin-token",
        "COLUMNS": "200",
        "TERM": "xterm",
    }
    code, output = on_a_terminal([OTAKIT, "devices", "--tag", tag], env)
    assert code == 0, output
    for device in three:
        assert device in output
    assert "accepted" in output
    assert "pending" in output
    assert "● online" in output
    assert "\x1b[" in output  # styled: it is a terminal
    assert "┃" in output or "│" in output  # Rich's table
    code, output = on_a_terminal([OTAKIT, "device", three[0]], env)
    assert code == 0, output
    assert three[0] in output
    assert "accepted" in output


def test_actions_are_not_sent_twice() -> None:
    """A GET that may have reached the server is retried; an action (advance!) is not, unless it
    never left (no connection)."""
    from otakit.client import ServerClient
    from otakit.errors import UnavailableError

    sent: list[str] = []

    def lost(request: httpx.Request) -> httpx.Response:
        sent.append(request.method)
        raise httpx.ReadTimeout("no answer", request=request)

    with ServerClient("http://fleet.invalid", retries=1, transport=httpx.MockTransport(lost)) as client:
        for method in ("GET", "POST", "DELETE"):
            with pytest.raises(UnavailableError):
                client.call(method, "/api/v1/rollouts/1/advance")
    assert sent == ["GET", "GET", "POST", "DELETE"]

    def refused(request: httpx.Request) -> httpx.Response:
        sent.append(request.method)
        raise httpx.ConnectError("refused", request=request)

    sent.clear()
    transport = httpx.MockTransport(refused)
    with (
        ServerClient("http://fleet.invalid", retries=1, transport=transport) as client,
        pytest.raises(UnavailableError),
    ):
        client.call("POST", "/api/v1/rollouts/1/advance")
    assert sent == ["POST", "POST"]

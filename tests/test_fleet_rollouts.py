"""Staged rollouts against real servers on loopback, on SQLite and MariaDB: creation and its refusals,
the states, what each device is offered, counting and the automatic pause, timed advance, and two
server processes racing one change."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from otakit.protocol import RolloutAnswer
from otakit.rollout import bucket
from tests.api_client import assert_error, upload
from tests.databases import BACKENDS, database_url
from tests.samples import content_for, make_zip
from tests.servers import ADMIN_HEADERS, ENROLL_HEADERS, FLEET_ENV, RunningServer, run_server

ADMIN, ENROLL = ADMIN_HEADERS, ENROLL_HEADERS
ROLLOUTS = "/api/v1/rollouts"


@pytest.fixture(scope="module", params=BACKENDS)
def fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """A database URL and a work folder per backend, shared by the module's servers."""
    workdir: Path = tmp_path_factory.mktemp(f"rollouts-{request.param}")
    with database_url(request.param, workdir) as url:
        yield url, workdir


@pytest.fixture(scope="module")
def server(fleet: tuple[str, Path]) -> Iterator[RunningServer]:
    url, workdir = fleet
    with run_server(workdir, url, env=FLEET_ENV) as running:
        yield running


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def publish(server: RunningServer, package: str, version: str, *, hold: bool = False) -> None:
    data = make_zip({"v.txt": f"{package} {version}".encode()})
    response = upload(
        server, content_for(data, package, version), data, params={"hold": "1"} if hold else None
    )
    assert response.status_code == 200, response.text


def start(http: httpx.Client, package: str, version: str, status: int = 201, **policy: Any) -> dict[str, Any]:
    response = http.post(
        ROLLOUTS, headers=ADMIN, json={"package": package, "branch": "major", "version": version, **policy}
    )
    assert response.status_code == status, response.text
    if status == 201:
        RolloutAnswer.model_validate(response.json())  # as /docs says
    rollout: dict[str, Any] = response.json().get("rollout", {})
    return rollout


def act(http: httpx.Client, rollout: dict[str, Any], action: str, status: int = 200) -> dict[str, Any]:
    response = http.post(f"{ROLLOUTS}/{rollout['id']}/{action}", headers=ADMIN)
    assert response.status_code == status, response.text
    return response.json().get("rollout", {})  # type: ignore[no-any-return]


def latest(http: httpx.Client, package: str, device: str | None = None) -> str | None:
    params = {"package": package, "branch": "major", **({"device": device} if device else {})}
    response = http.get("/latestVersion", params=params)
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return str(response.json()["content.json"]["version"])


def enroll(http: httpx.Client, device: str, package: str, version: str = "1.0", **body: Any) -> str:
    packages = [{"package": package, "branch": "major", "version": version}]
    response = http.post(
        "/api/v1/devices/register", headers=ENROLL, json={"device": device, "packages": packages, **body}
    )
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def report(http: httpx.Client, device: str, token: str, package: str, state: str, job: str = "j1") -> None:
    body = {"id": job, "package": package, "action": "update", "state": state, "step": "x",
            "from_version": "1.0", "to_version": "2.0", "progress": 0, "error": None, "log": []}  # fmt: skip
    response = http.post(
        f"/api/v1/devices/{device}/reports", headers={"Authorization": f"Bearer {token}"}, json=body
    )
    assert response.status_code == 200, response.text


def test_creation_and_its_refusals(http: httpx.Client, server: RunningServer, pkg: str) -> None:
    assert_error(http.post(ROLLOUTS, json={"package": pkg, "branch": "major", "version": "2.0"}), 401)
    assert_error(
        http.post(ROLLOUTS, headers=ENROLL, json={"package": pkg, "branch": "major", "version": "2.0"}), 401
    )
    start(http, pkg, "2.0", 404)
    publish(server, pkg, "1.0")
    publish(server, pkg, "2.0", hold=True)
    publish(server, pkg, "0.9", hold=True)
    for bad in ({"phases": [10, 5, 100]}, {"phases": [1, 50]}, {"phases": [0, 100]}, {"phases": []},
                {"max_failure_rate": 1.5}, {"min_reports": -1}, {"phase_seconds": 0}, {"tags": ["../x"]},
                {"unknown": 1}):  # fmt: skip
        start(http, pkg, "2.0", 400, **bad)
    start(http, pkg, "1.0", 409)  # released already
    start(http, pkg, "0.9", 409)  # lower than the released 1.0
    rollout = start(http, pkg, "2.0.0")  # 2.0.0 is 2.0
    expected = {"package": pkg, "branch": "major", "version": "2.0", "phases": [1, 10, 50, 100], "phase": 0,
                "percent": 1, "state": "running"}  # fmt: skip
    assert {key: rollout[key] for key in expected} == expected
    assert (rollout["max_failure_rate"], rollout["min_reports"], rollout["phase_seconds"]) == (0.05, 20, None)
    assert rollout["counts"] == {"succeeded": 0, "failed": 0, "in_progress": 0}
    assert rollout["failure_rate"] == 0
    assert "running or paused rollout" in assert_error(
        http.post(ROLLOUTS, headers=ADMIN, json={"package": pkg, "branch": "major", "version": "2.0"}), 409
    )
    # holding a version under rollout is refused; releasing it by hand completes the rollout
    assert "abort it" in assert_error(http.post(f"/api/v1/versions/{pkg}/major/2.0/hold", headers=ADMIN), 409)
    assert http.post(f"/api/v1/versions/{pkg}/major/2.0/release", headers=ADMIN).status_code == 200
    done = http.get(f"{ROLLOUTS}/{rollout['id']}", headers=ADMIN).json()["rollout"]
    assert (done["state"], done["percent"]) == ("completed", 100)
    assert latest(http, pkg) == "2.0"


def test_a_rollout_whose_only_phase_is_100_completes_at_once(
    http: httpx.Client, server: RunningServer, pkg: str
) -> None:
    publish(server, pkg, "1.0", hold=True)
    assert latest(http, pkg) is None
    rollout = start(http, pkg, "1.0", phases=[100])
    assert rollout["state"] == "completed"
    assert latest(http, pkg) == "1.0"


def test_states_and_what_each_device_is_offered(http: httpx.Client, server: RunningServer, pkg: str) -> None:
    publish(server, pkg, "1.0")
    publish(server, pkg, "2.0", hold=True)
    devices = [f"{pkg}-d{n}" for n in range(120)]
    for device in devices:
        enroll(http, device, pkg, tags=["eu"] if devices.index(device) % 2 else ["us"])
    rollout = start(http, pkg, "2.0", phases=[10, 50, 100], tags=["eu"])

    def offered() -> set[str]:
        return {device for device in devices if latest(http, pkg, device) == "2.0"}

    cohort = {d for d in devices if devices.index(d) % 2 and bucket(pkg, "major", "2.0", d) < 1000}
    assert offered() == cohort
    assert latest(http, pkg) == "1.0"  # anonymous: the released version
    assert latest(http, pkg, f"{pkg}-unknown") == "1.0"
    member = sorted(cohort)[0]
    assert http.post(f"/api/v1/devices/{member}/pin", headers=ADMIN).status_code == 200
    assert latest(http, pkg, member) == "1.0"  # pinned: what it runs
    assert http.post(f"/api/v1/devices/{member}/unpin", headers=ADMIN).status_code == 200

    paused = act(http, rollout, "pause")
    assert (paused["state"], paused["paused_reason"]) == ("paused", "operator")
    assert offered() == set()  # while paused, nobody is offered the version
    act(http, rollout, "pause", 409)
    act(http, rollout, "advance", 409)
    resumed = act(http, rollout, "resume")
    assert (resumed["state"], resumed["paused_reason"]) == ("running", None)
    act(http, rollout, "resume", 409)

    grown = act(http, rollout, "advance")
    assert (grown["phase"], grown["percent"]) == (1, 50)
    bigger = offered()
    assert cohort <= bigger  # nobody leaves the cohort as it grows
    assert bigger == {d for d in devices if devices.index(d) % 2 and bucket(pkg, "major", "2.0", d) < 5000}

    completed = act(http, rollout, "advance")
    assert completed["state"] == "completed"
    assert latest(http, pkg) == "2.0"  # released to everyone
    for action in ("advance", "pause", "resume", "abort"):
        act(http, rollout, action, 409)


def test_abort_keeps_the_version_held(http: httpx.Client, server: RunningServer, pkg: str) -> None:
    publish(server, pkg, "1.0")
    publish(server, pkg, "2.0", hold=True)
    start(http, pkg, "2.0", 400, phases=[100 / 3, 100])  # not a multiple of 0.01
    rollout = start(http, pkg, "2.0", phases=[50, 100])
    assert act(http, rollout, "abort")["state"] == "aborted"
    act(http, rollout, "abort", 409)
    assert latest(http, pkg) == "1.0"
    listed = http.get(ROLLOUTS, headers=ADMIN, params={"package": pkg}).json()["list"]
    assert [r["state"] for r in listed] == ["aborted"]
    assert start(http, pkg, "2.0", phases=[50, 100])["state"] == "running"  # a new one may start


def test_reports_count_and_pause_the_rollout_by_themselves(
    http: httpx.Client, server: RunningServer, pkg: str
) -> None:
    publish(server, pkg, "1.0")
    publish(server, pkg, "2.0", hold=True)
    tokens = {f"{pkg}-{n}": enroll(http, f"{pkg}-{n}", pkg) for n in range(6)}
    rollout = start(http, pkg, "2.0", phases=[25, 100], min_reports=4, max_failure_rate=0.25)
    names = sorted(tokens)

    def counts() -> dict[str, Any]:
        got: dict[str, Any] = http.get(f"{ROLLOUTS}/{rollout['id']}", headers=ADMIN).json()["rollout"]
        return got

    report(http, names[0], tokens[names[0]], pkg, "running")
    report(http, names[0], tokens[names[0]], pkg, "running")  # the same report again: nothing changes
    assert counts()["counts"] == {"succeeded": 0, "failed": 0, "in_progress": 1}
    report(http, names[0], tokens[names[0]], pkg, "succeeded")
    report(http, names[1], tokens[names[1]], pkg, "rolled_back")
    now = counts()
    assert now["counts"] == {"succeeded": 1, "failed": 1, "in_progress": 0}
    assert (now["state"], now["failure_rate"]) == ("running", 0.5)  # 1 / max(2, 4) = 0.25: not above
    report(http, names[2], tokens[names[2]], pkg, "failed")  # 2 / max(3, 4) = 0.5 > 0.25
    paused = counts()
    assert paused["state"] == "paused"
    assert paused["paused_reason"].startswith("2 of 3 reported installs failed"), paused
    assert "paused automatically" in paused["paused_reason"]
    assert {latest(http, pkg, name) for name in names} == {"1.0"}  # nobody is offered it now
    # a report for another version or package counts for nothing
    report(http, names[3], tokens[names[3]], f"{pkg}-other", "failed")
    assert counts()["counts"] == {"succeeded": 1, "failed": 2, "in_progress": 0}
    resumed = act(http, {"id": rollout["id"]}, "resume")
    assert resumed["state"] == "running"
    report(http, names[2], tokens[names[2]], pkg, "succeeded", job="j2")  # tried again, and it worked
    assert counts()["counts"] == {"succeeded": 2, "failed": 1, "in_progress": 0}


def test_a_rollout_advances_by_itself_after_phase_seconds(
    http: httpx.Client, server: RunningServer, pkg: str
) -> None:
    publish(server, pkg, "1.0")
    publish(server, pkg, "2.0", hold=True)
    rollout = start(http, pkg, "2.0", phases=[10, 20, 100], phase_seconds=1)
    deadline = time.monotonic() + 20
    phases = set()
    while time.monotonic() < deadline:
        now = http.get(f"{ROLLOUTS}/{rollout['id']}", headers=ADMIN).json()["rollout"]
        phases.add(now["phase"])
        if now["state"] == "completed":
            break
        time.sleep(0.2)
    assert now["state"] == "completed", now
    assert latest(http, pkg) == "2.0"
    assert 1 in phases  # one phase at a time


def test_two_servers_never_apply_one_change_twice(
    fleet: tuple[str, Path], server: RunningServer, pkg: str
) -> None:
    url, workdir = fleet
    publish(server, pkg, "1.0")
    publish(server, pkg, "2.0", hold=True)
    with run_server(workdir, url, env=FLEET_ENV) as second, server.client() as one, second.client() as two:
        rollout = start(one, pkg, "2.0", phases=[1, 2, 3, 4, 5, 6, 7, 8, 100])
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(
                lambda n: (one if n % 2 else two).post(f"{ROLLOUTS}/{rollout['id']}/advance", headers=ADMIN),
                range(8),
            ))  # fmt: skip
        won = [a for a in answers if a.status_code == 200]
        assert all(a.status_code in (200, 409) for a in answers), [a.text for a in answers]
        final = one.get(f"{ROLLOUTS}/{rollout['id']}", headers=ADMIN).json()["rollout"]
        assert final["phase"] == len(won)  # every 200 moved it exactly one phase, no more
        assert sorted(a.json()["rollout"]["phase"] for a in won) == list(range(1, len(won) + 1))
        assert latest(two, pkg, f"{pkg}-nobody") == "1.0"


def test_every_rollout_route_needs_the_admin_token(http: httpx.Client) -> None:
    for method, path in (("GET", ROLLOUTS), ("GET", f"{ROLLOUTS}/1"), ("POST", f"{ROLLOUTS}/1/advance"),
                         ("POST", f"{ROLLOUTS}/1/pause"), ("POST", f"{ROLLOUTS}/1/resume"),
                         ("POST", f"{ROLLOUTS}/1/abort")):  # fmt: skip
        for headers in ({}, ENROLL, {"Authorization": "Bearer test-token"}):
            assert_error(http.request(method, path, headers=headers), 401)
    assert_error(http.get(f"{ROLLOUTS}/999999", headers=ADMIN), 404)
    assert_error(http.get(f"{ROLLOUTS}/x", headers=ADMIN), 400)
    assert_error(http.get(ROLLOUTS, headers=ADMIN, params={"state": "odd"}), 400)


def test_reports_through_two_servers_are_all_counted(
    fleet: tuple[str, Path], server: RunningServer, pkg: str
) -> None:
    url, workdir = fleet
    publish(server, pkg, "1.0")
    publish(server, pkg, "2.0", hold=True)
    with run_server(workdir, url, env=FLEET_ENV) as second, server.client() as one, second.client() as two:
        tokens = {f"{pkg}-{n}": enroll(one, f"{pkg}-{n}", pkg) for n in range(40)}
        rollout = start(one, pkg, "2.0", phases=[50, 100], min_reports=1000)
        names = sorted(tokens)

        def send(n: int) -> None:
            name = names[n % 40]
            state = ("running", "succeeded", "failed")[n // 40]
            report(one if n % 2 else two, name, tokens[name], pkg, state, job=f"j{n // 40}")

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(send, range(40)))  # everyone running
            list(pool.map(send, range(40, 80)))  # then half succeed (by n % 2), through both servers
        final = one.get(f"{ROLLOUTS}/{rollout['id']}", headers=ADMIN).json()["rollout"]
        assert final["counts"] == {"succeeded": 40, "failed": 0, "in_progress": 0}, final


def test_bad_rollout_bodies_write_nothing(http: httpx.Client, server: RunningServer, pkg: str) -> None:
    publish(server, pkg, "2.0", hold=True)
    json_headers = {**ADMIN, "Content-Type": "application/json"}
    for body in (b'{"package": ', b"[]", b'{"package": "../x", "branch": "major", "version": "2.0"}',
                 b'{"package": "a", "branch": "major", "version": "not a version"}'):  # fmt: skip
        assert_error(http.post(ROLLOUTS, headers=json_headers, content=body), 400)
    huge = b'{"package": "' + b"x" * (1 << 20) + b'"}'
    assert_error(http.post(ROLLOUTS, headers=json_headers, content=huge), 413)
    assert http.get(ROLLOUTS, headers=ADMIN, params={"package": pkg}).json()["list"] == []

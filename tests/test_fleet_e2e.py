"""A fleet of real daemons and a real server: a staged rollout reaches the devices in its cohort only,
and real failing AfterUpdates pause it by themselves."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from otakit.rollout import bucket
from tests.daemon_api import Api, running
from tests.daemon_packages import Publisher
from tests.daemons import write_config
from tests.servers import ADMIN_HEADERS, FLEET_ENV, RunningServer, run_server

ADMIN = ADMIN_HEADERS
HEARTBEAT_ENV = {**FLEET_ENV, "OTAKIT_HEARTBEAT_SECONDS": "1"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    workdir = tmp_path_factory.mktemp("fleet-e2e")
    with run_server(workdir, f"sqlite:///{workdir / 'ota.db'}", env=HEARTBEAT_ENV) as server:
        yield server


def ids_by_cohort(
    package: str, version: str, percent: int, inside: int, outside: int
) -> tuple[list[str], list[str]]:
    """Device ids in and out of a rollout's cohort at ``percent``."""
    ins: list[str] = []
    outs: list[str] = []
    n = 0
    while len(ins) < inside or len(outs) < outside:
        device = f"{package}-dev{n}"
        (ins if bucket(package, "major", version, device) < percent * 100 else outs).append(device)
        n += 1
    return ins[:inside], outs[:outside]


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s")


def rollout_of(server: RunningServer, rollout_id: int) -> dict[str, Any]:
    found: dict[str, Any] = httpx.get(f"{server.url}/api/v1/rollouts/{rollout_id}", headers=ADMIN).json()[
        "rollout"
    ]
    return found


def start_rollout(server: RunningServer, package: str, version: str, **policy: Any) -> dict[str, Any]:
    body = {"package": package, "branch": "major", "version": version, **policy}
    response = httpx.post(f"{server.url}/api/v1/rollouts", headers=ADMIN, json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()["rollout"]
    return created


def daemons(
    stack: ExitStack, tmp_path: Path, server: RunningServer, publisher: Publisher, ids: list[str]
) -> dict[str, Api]:
    apis = {}
    for device in ids:
        config = write_config(
            tmp_path / device, device=device, registry=server.url, enroll_token="enroll-token"
        )
        apis[device] = stack.enter_context(running(config))
    return apis


@pytest.fixture
def publisher(fleet: RunningServer, tmp_path: Path) -> Iterator[Publisher]:
    publisher = Publisher(fleet, tmp_path / "publish")
    yield publisher
    publisher.close()


def test_a_rollout_reaches_its_cohort_only_and_pauses_on_real_failures(
    fleet: RunningServer, publisher: Publisher, tmp_path: Path, pkg: str
) -> None:
    inside, outside = ids_by_cohort(pkg, "2.0", 50, inside=3, outside=1)
    publisher.publish(pkg, "1.0")
    publisher.publish(pkg, "2.0", hold=True, after="exit 3")  # every install of it fails
    with ExitStack() as stack:
        apis = daemons(stack, tmp_path, fleet, publisher, inside + outside)
        for api in apis.values():
            api.install(publisher, pkg, version="1.0")
        rollout = start_rollout(fleet, pkg, "2.0", phases=[50, 100], min_reports=2, max_failure_rate=0.5)

        def checked(device: str) -> list[dict[str, Any]]:
            api = apis[device]
            api.run_job("POST", "/check")
            return [api.wait_job(job["id"]) for job in api.get("/jobs")["list"] if job["action"] == "update"]

        def counts() -> dict[str, int]:
            found: dict[str, int] = rollout_of(fleet, rollout["id"])["counts"]
            return found

        assert checked(outside[0]) == []  # not in the cohort: offered 1.0, nothing to do
        [first] = checked(inside[0])
        assert (first["state"], first["to_version"]) == ("rolled_back", "2.0")
        wait_for("the first failure counted", lambda: counts()["failed"] == 1)
        assert rollout_of(fleet, rollout["id"])["state"] == "running"  # 1 / max(1, 2) = 0.5: not above 0.5

        [second] = checked(inside[1])
        assert second["state"] == "rolled_back"
        wait_for("the second failure counted", lambda: counts()["failed"] == 2)
        paused = rollout_of(fleet, rollout["id"])
        assert paused["state"] == "paused", paused  # 2 / max(2, 2) = 1 > 0.5
        assert paused["paused_reason"].startswith("2 of 2 reported installs failed")

        assert checked(inside[2]) == []  # paused: nobody new is offered 2.0
        for device, api in apis.items():
            assert api.version(pkg) == "1.0", device
        device = httpx.get(f"{fleet.url}/api/v1/devices/{inside[0]}", headers=ADMIN).json()["device"]
        assert device["jobs"][pkg]["state"] == "rolled_back"
        runs = [{"package": pkg, "branch": "major", "version": "1.0"}]
        wait_for(  # the inventory arrives with the next heartbeat (every second)
            "the inventory",
            lambda: (
                httpx.get(f"{fleet.url}/api/v1/devices/{inside[0]}", headers=ADMIN).json()["device"][
                    "packages"
                ]
                == runs
            ),
        )


def test_a_good_version_reaches_the_cohort_then_everyone(
    fleet: RunningServer, publisher: Publisher, tmp_path: Path, pkg: str
) -> None:
    inside, outside = ids_by_cohort(pkg, "2.0", 50, inside=1, outside=1)
    publisher.publish(pkg, "1.0")
    publisher.publish(pkg, "2.0", hold=True)
    with ExitStack() as stack:
        apis = daemons(stack, tmp_path, fleet, publisher, inside + outside)
        for api in apis.values():
            api.install(publisher, pkg, version="1.0")
        rollout = start_rollout(fleet, pkg, "2.0", phases=[50, 100], min_reports=1)
        for api in apis.values():
            api.run_job("POST", "/check")
        wait_for("the cohort updated", lambda: apis[inside[0]].version(pkg) == "2.0")
        assert apis[outside[0]].version(pkg) == "1.0"
        wait_for("the success counted", lambda: rollout_of(fleet, rollout["id"])["counts"]["succeeded"] == 1)
        done = httpx.post(f"{fleet.url}/api/v1/rollouts/{rollout['id']}/advance", headers=ADMIN).json()
        assert done["rollout"]["state"] == "completed"
        apis[outside[0]].run_job("POST", "/check")
        wait_for("everyone updated", lambda: apis[outside[0]].version(pkg) == "2.0")


def test_under_manual_approval_a_daemon_waits_pending_and_is_offered_the_rollout_once_accepted(
    tmp_path: Path, pkg: str
) -> None:
    """A real daemon on a server with OTAKIT_DEVICE_APPROVAL=manual: enrolled pending, it heartbeats and
    gets released versions, but a rollout's version only after an operator accepts it."""
    env = {**HEARTBEAT_ENV, "OTAKIT_DEVICE_APPROVAL": "manual"}
    (tmp_path / "server").mkdir()
    with run_server(tmp_path / "server", f"sqlite:///{tmp_path / 'ota.db'}", env=env) as server:
        publisher = Publisher(server, tmp_path / "publish")
        try:
            [device], _ = ids_by_cohort(pkg, "2.0", 50, inside=1, outside=0)
            publisher.publish(pkg, "1.0")
            publisher.publish(pkg, "2.0", hold=True)
            with ExitStack() as stack:
                api = daemons(stack, tmp_path, server, publisher, [device])[device]

                def shown() -> dict[str, Any]:
                    found: dict[str, Any] = httpx.get(
                        f"{server.url}/api/v1/devices/{device}", headers=ADMIN
                    ).json()["device"]
                    return found

                wait_for("the daemon enrolled, pending", lambda: shown()["state"] == "pending")
                wait_for("the pending daemon heartbeating", lambda: shown()["online"])
                api.install(publisher, pkg, version="1.0")  # released versions: offered while pending
                start_rollout(server, pkg, "2.0", phases=[50, 100], min_reports=1)  # the device is in 50 %
                api.run_job("POST", "/check")
                assert api.version(pkg) == "1.0"  # pending: not in any cohort
                accepted = httpx.post(f"{server.url}/api/v1/devices/{device}/accept", headers=ADMIN)
                assert accepted.status_code == 200, accepted.text
                api.run_job("POST", "/check")
                wait_for("the accepted daemon updated", lambda: api.version(pkg) == "2.0")
        finally:
            publisher.close()

"""The fleet's device routes against a real server on loopback, on SQLite and MariaDB: enrollment,
heartbeats, reports, the operator's view, and every refusal of the contract."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from otakit.errors import ValidationError
from otakit.server.settings import load_settings
from tests.api_client import assert_error
from tests.databases import BACKENDS, database_url
from tests.servers import ADMIN_HEADERS, ENROLL_HEADERS, FLEET_ENV, RunningServer, run_server

ADMIN, ENROLL = ADMIN_HEADERS, ENROLL_HEADERS
PUBLISHER = {"Authorization": "Bearer test-token"}
DEVICES = "/api/v1/devices"


@pytest.fixture(scope="module", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A real fleet server per backend, shared by the module's tests."""
    workdir: Path = tmp_path_factory.mktemp(f"fleet-{request.param}")
    with database_url(request.param, workdir) as url, run_server(workdir, url, env=FLEET_ENV) as running:
        yield running


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture
def dev() -> str:
    return f"dev-{uuid.uuid4().hex[:10]}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def enroll(http: httpx.Client, device: str, **body: Any) -> dict[str, Any]:
    response = http.post(f"{DEVICES}/register", headers=ENROLL, json={"device": device, **body})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def device_of(http: httpx.Client, device: str) -> dict[str, Any]:
    response = http.get(f"{DEVICES}/{device}", headers=ADMIN)
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()["device"]
    return found


def job(
    job_id: str, state: str, *, package: str = "app", progress: int = 0, step: str = ""
) -> dict[str, Any]:
    return {"id": job_id, "package": package, "action": "update", "state": state, "step": step,
            "from_version": "1.0", "to_version": "2.0", "progress": progress, "error": None,
            "log": ["<script>alert(1)</script>"]}  # fmt: skip


def test_enrollment(http: httpx.Client, dev: str) -> None:
    body = {"device": dev, "description": "line 3", "tags": ["eu"], "attributes": {"hw": "rev2"},
            "packages": [{"package": "app", "branch": "major", "version": "1.0"}]}  # fmt: skip
    for headers in ({}, bearer("wrong"), PUBLISHER, ADMIN):
        assert_error(http.post(f"{DEVICES}/register", headers=headers, json=body), 401)
    answer = enroll(http, **body)
    assert answer["status"] == 200
    assert answer["heartbeat_seconds"] == 60
    assert len(answer["token"]) >= 43  # 32 random bytes
    device = answer["device"]
    expected = {"id": dev, "description": "line 3", "tags": ["eu"], "attributes": {"hw": "rev2"},
                "state": "accepted", "pinned": False, "online": True}  # fmt: skip
    assert {key: device[key] for key in expected} == expected
    assert device["packages"] == body["packages"]
    assert device["last_seen"] == device["registered"]
    assert device["registered"].endswith("Z")
    assert "enrolled already" in assert_error(
        http.post(f"{DEVICES}/register", headers=ENROLL, json=body), 409
    )
    assert device_of(http, dev)["description"] == "line 3"  # the first record stands


@pytest.mark.parametrize(
    "body",
    [
        b'{"device": "x",',
        b"[]",
        json.dumps({"device": ".."}).encode(),
        json.dumps({"device": "a/b"}).encode(),
        json.dumps({"device": "x" * 101}).encode(),
        json.dumps({"device": "ok-1", "unknown": 1}).encode(),
        json.dumps({"device": "ok-2", "tags": ["../x"]}).encode(),
        json.dumps(
            {"device": "ok-3", "packages": [{"package": "a", "branch": "b", "version": "not a version"}]}
        ).encode(),
        json.dumps({"device": "ok-4", "attributes": {"k": 5}}).encode(),
    ],
)
def test_bad_enrollments_write_nothing(http: httpx.Client, body: bytes) -> None:
    before = http.get(DEVICES, headers=ADMIN).json()["total"]
    assert_error(
        http.post(
            f"{DEVICES}/register", headers={**ENROLL, "Content-Type": "application/json"}, content=body
        ),
        400,
    )
    assert http.get(DEVICES, headers=ADMIN).json()["total"] == before


def test_a_huge_body_is_refused_unread(http: httpx.Client, dev: str) -> None:
    body = json.dumps({"device": dev, "description": "x" * (2 << 20)})
    assert_error(
        http.post(
            f"{DEVICES}/register", headers={**ENROLL, "Content-Type": "application/json"}, content=body
        ),
        413,
    )
    assert_error(http.get(f"{DEVICES}/{dev}", headers=ADMIN), 404)
    token = enroll(http, dev)["token"]
    huge = json.dumps({**job("j", "running"), "log": ["y" * 3999] * 1000})
    assert_error(http.post(f"{DEVICES}/{dev}/reports", headers=bearer(token), content=huge), 413)
    assert device_of(http, dev)["reports"] == []


def test_heartbeats_and_their_tokens(http: httpx.Client, dev: str) -> None:
    token = enroll(http, dev, tags=["a"])["token"]
    other = enroll(http, dev + "-other")["token"]
    url = f"{DEVICES}/{dev}/heartbeat"
    for headers in ({}, bearer("wrong"), ENROLL, ADMIN, PUBLISHER):
        assert_error(http.post(url, headers=headers), 401)
    assert "another device" in assert_error(http.post(url, headers=bearer(other)), 403)
    assert_error(http.post(url, headers=bearer(other), json={"tags": ["stolen"]}), 403)
    assert device_of(http, dev)["tags"] == ["a"]

    answer = http.post(url, headers=bearer(token))
    assert answer.json() == {"status": 200, "heartbeat_seconds": 60}
    inventory = {"packages": [{"package": "app", "branch": "major", "version": "2.0"}], "tags": ["b", "c"],
                 "attributes": {"os": "debian"}, "description": "moved"}  # fmt: skip
    assert http.post(url, headers=bearer(token), json=inventory).status_code == 200
    device = device_of(http, dev)
    assert {k: device[k] for k in inventory} == inventory
    assert device["online"] is True
    assert_error(http.post(url, headers=bearer(token), content=b"{not json"), 400)
    assert_error(http.post(url, headers=bearer(token), json={"packages": "x"}), 400)
    assert_error(http.post(f"{DEVICES}/../heartbeat", headers=bearer(token)), 404)
    assert_error(http.post(f"{DEVICES}/-x/heartbeat", headers=bearer(token)), 400)


def test_reports_are_idempotent_and_kept_newest_first(http: httpx.Client, dev: str) -> None:
    token = enroll(http, dev)["token"]
    other = enroll(http, dev + "-x")["token"]
    url = f"{DEVICES}/{dev}/reports"
    for report in (job("j1", "running", step="download", progress=10),) * 3 + (
        job("j1", "succeeded", step="record", progress=100),
    ):
        response = http.post(url, headers=bearer(token), json=report)
        assert response.json() == {"status": 200}
    # a device reporting for another is refused, and nothing is written
    assert_error(http.post(url, headers=bearer(other), json=job("j9", "failed")), 403)
    assert_error(http.post(url, headers=ENROLL, json=job("j9", "failed")), 401)
    assert_error(
        http.post(url, headers=bearer(token), json={**job("j9", "failed"), "state": "exploded"}), 400
    )
    assert_error(http.post(url, headers=bearer(token), json={**job("j9", "failed"), "id": "../../x"}), 400)
    device = device_of(http, dev)
    assert [(r["id"], r["state"], r["progress"]) for r in device["reports"]] == [
        ("j1", "succeeded", 100),
        ("j1", "running", 10),
    ]
    assert device["jobs"]["app"]["state"] == "succeeded"
    assert device["reports"][0]["log"] == ["<script>alert(1)</script>"]  # stored as text, never as markup


def test_the_operators_list(http: httpx.Client, dev: str) -> None:
    for n in range(5):
        version = "1.0.0" if n < 3 else "2.0"
        packages = [{"package": f"{dev}-app", "branch": "major", "version": version}]
        enroll(http, f"{dev}-{n}", tags=["odd" if n % 2 else "even"], packages=packages)
    for headers in ({}, bearer("wrong"), ENROLL, PUBLISHER):
        assert_error(http.get(DEVICES, headers=headers), 401)
    first = http.get(DEVICES, headers=ADMIN, params={"package": f"{dev}-app", "limit": 2}).json()
    assert [d["id"] for d in first["list"]] == [f"{dev}-0", f"{dev}-1"]
    assert (first["next"], first["total"]) == (f"{dev}-1", 5)
    rest = http.get(DEVICES, headers=ADMIN, params={"package": f"{dev}-app", "after": first["next"]}).json()
    assert [d["id"] for d in rest["list"]] == [f"{dev}-2", f"{dev}-3", f"{dev}-4"]
    assert rest["next"] is None
    by_version = http.get(DEVICES, headers=ADMIN, params={"package": f"{dev}-app", "version": "1.0"}).json()
    assert by_version["total"] == 3  # 1.0 finds 1.0.0
    odd = http.get(DEVICES, headers=ADMIN, params={"package": f"{dev}-app", "tag": "odd", "online": "true"})
    assert [d["id"] for d in odd.json()["list"]] == [f"{dev}-1", f"{dev}-3"]
    offline = http.get(DEVICES, headers=ADMIN, params={"package": f"{dev}-app", "online": "false"})
    assert offline.json()["total"] == 0
    for params in ({"limit": 0}, {"limit": 1001}, {"state": "gone"}, {"after": "../x"}, {"version": "x y"}):
        assert_error(http.get(DEVICES, headers=ADMIN, params=params), 400)


def test_pin_and_delete(http: httpx.Client, dev: str) -> None:
    token = enroll(http, dev)["token"]
    for action in ("pin", "unpin", "accept"):
        assert_error(http.post(f"{DEVICES}/{dev}/{action}", headers=bearer(token)), 401)
        assert_error(http.post(f"{DEVICES}/{dev}-nobody/{action}", headers=ADMIN), 404)
    assert http.post(f"{DEVICES}/{dev}/pin", headers=ADMIN).json() == {"status": 200}
    assert device_of(http, dev)["pinned"] is True
    assert http.post(f"{DEVICES}/{dev}/unpin", headers=ADMIN).status_code == 200
    assert device_of(http, dev)["pinned"] is False
    http.post(f"{DEVICES}/{dev}/reports", headers=bearer(token), json=job("j1", "running"))

    assert_error(http.delete(f"{DEVICES}/{dev}", headers=bearer(token)), 401)
    assert http.delete(f"{DEVICES}/{dev}", headers=ADMIN).json() == {"status": 200}
    assert_error(http.delete(f"{DEVICES}/{dev}", headers=ADMIN), 404)
    assert_error(http.get(f"{DEVICES}/{dev}", headers=ADMIN), 404)
    assert_error(http.post(f"{DEVICES}/{dev}/heartbeat", headers=bearer(token)), 401)  # the old token is gone
    again = enroll(http, dev)
    assert again["token"] != token
    assert device_of(http, dev)["reports"] == []


def test_manual_approval(tmp_path: Path) -> None:
    env = {**FLEET_ENV, "OTAKIT_DEVICE_APPROVAL": "manual", "OTAKIT_HEARTBEAT_SECONDS": "5"}
    with run_server(tmp_path, f"sqlite:///{tmp_path / 'ota.db'}", env=env) as server, server.client() as http:
        answer = enroll(http, "pending-1")
        assert (answer["device"]["state"], answer["heartbeat_seconds"]) == ("pending", 5)
        pending = http.get(DEVICES, headers=ADMIN, params={"state": "pending"}).json()
        assert [d["id"] for d in pending["list"]] == ["pending-1"]
        # a pending device may already heartbeat and report
        assert http.post(f"{DEVICES}/pending-1/heartbeat", headers=bearer(answer["token"])).status_code == 200
        assert http.post(f"{DEVICES}/pending-1/accept", headers=ADMIN).json() == {"status": 200}
        assert device_of(http, "pending-1")["state"] == "accepted"


def test_fleet_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTAKIT_ENROLL_TOKENS", "e1, e2")
    monkeypatch.setenv("OTAKIT_DEVICE_APPROVAL", "manual")
    settings = load_settings()
    assert (settings.enroll_tokens, settings.device_approval, settings.heartbeat_seconds) == (
        ["e1", "e2"],
        "manual",
        60,
    )
    monkeypatch.setenv("OTAKIT_ADMIN_TOKENS", "e2")
    with pytest.raises(ValidationError, match="both an admin token and an enrollment token"):
        load_settings()
    monkeypatch.delenv("OTAKIT_ADMIN_TOKENS")
    for name, value in (("OTAKIT_DEVICE_APPROVAL", "sometimes"), ("OTAKIT_HEARTBEAT_SECONDS", "0")):
        monkeypatch.setenv(name, value)
        with pytest.raises(ValidationError):
            load_settings()
        monkeypatch.delenv(name)


def test_the_answers_are_documented(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert {"DeviceList", "DeviceAnswer", "RegisterAnswer", "RolloutAnswer", "RolloutList"} <= set(schemas)
    listed = spec["paths"]["/api/v1/devices"]["get"]["responses"]["200"]["content"]["application/json"]
    assert listed["schema"] == {"$ref": "#/components/schemas/DeviceList"}
    assert set(schemas["DeviceInfo"]["properties"]) >= {
        "id",
        "state",
        "pinned",
        "online",
        "last_seen",
        "jobs",
    }


def test_answers_match_their_models(http: httpx.Client, dev: str) -> None:
    from otakit.protocol import DeviceAnswer, DeviceList, RegisterAnswer

    registered = RegisterAnswer.model_validate(enroll(http, dev, tags=["t"]))
    assert registered.device.id == dev
    assert (
        DeviceAnswer.model_validate(http.get(f"{DEVICES}/{dev}", headers=ADMIN).json()).device.reports == []
    )
    assert DeviceList.model_validate(http.get(DEVICES, headers=ADMIN, params={"tag": "t"}).json()).total >= 1

"""The device daemon end to end: a real otakit server, the daemon as a real subprocess, real shell hooks.

Every test has its own package names (the server is shared by the module) and its own device folder.
Hooks append ``tag|package|old|new|local|branch|cwd`` lines to a log, so their order, environment and
working folder can be checked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.daemon_api import JOB_KEYS, Api, assert_error, install_body, leftovers, running
from tests.daemon_packages import (
    HookLine,
    Publisher,
    corrupt_on_server,
    default_files,
    hook,
    read_hooks,
    tree,
    unsafe_zip,
)
from tests.daemons import TOKEN, run_daemon, start_daemon, write_config
from tests.samples import LEGACY
from tests.servers import RunningServer, free_port


@pytest.fixture
def publisher(sqlite_server: RunningServer, tmp_path: Path) -> Iterator[Publisher]:
    publisher = Publisher(sqlite_server, tmp_path / "publish")
    yield publisher
    publisher.close()


@pytest.fixture
def device(tmp_path: Path) -> Path:
    return tmp_path / "device"


@pytest.fixture
def hooks_log(tmp_path: Path) -> Path:
    return tmp_path / "hooks.log"


# -- the token ---------------------------------------------------------------------------------------

ROUTES = [
    ("GET", "/info"),
    ("GET", "/packages"),
    ("GET", "/packages/app"),
    ("GET", "/packages/app/latest"),
    ("POST", "/packages"),
    ("POST", "/packages/app/update"),
    ("POST", "/packages/app/rollback"),
    ("DELETE", "/packages/app"),
    ("POST", "/check"),
    ("GET", "/jobs"),
    ("GET", "/jobs/some-job"),
]


def test_every_route_needs_the_token(device: Path) -> None:
    refused = [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"X-Token": "wrong"},
        {"X-Token": ""},
    ]
    body = {"package": "app", "branch": "major", "remote": "http://127.0.0.1:1", "local": "./app"}
    with (
        run_daemon(write_config(device)) as daemon,
        httpx.Client(base_url=daemon.url) as client,
    ):
        for method, path in ROUTES:
            for headers in refused:
                sent = body if (method, path) == ("POST", "/packages") else None
                response = client.request(method, path, headers=headers, json=sent)
                assert_error(response, 401)
                assert TOKEN not in response.text
        # a body that is invalid too is still refused for the token first
        assert_error(client.post("/packages", json={"package": 5}), 401)
        broken = {"Content-Type": "application/json"}
        assert_error(client.post("/packages", content=b"{not json", headers=broken), 401)
        assert_error(client.get("/no-such-route"), 401)

        for headers in (
            {"Authorization": f"Bearer {TOKEN}"},
            {"Authorization": f"bearer {TOKEN}"},
            {"X-Token": TOKEN},
        ):
            response = client.get("/info", headers=headers)
            assert response.status_code == 200, response.text
            assert response.json()["status"] == 200
        # nothing was started by the refused calls
        assert client.get("/jobs", headers={"X-Token": TOKEN}).json() == {"status": 200, "list": []}


# -- reading -----------------------------------------------------------------------------------------


def test_info_packages_latest_and_jobs(device: Path, publisher: Publisher, pkg: str) -> None:
    name = f"{pkg}-app"
    publisher.publish(name, "1.0")
    latest = publisher.publish(name, "2.0")
    config = write_config(device, device="kiosk-7", description="the kiosk by the door", auto_update=False)
    with running(config) as api:
        first = api.install(publisher, name, version="1.0")
        assert first == {
            "id": first["id"],
            "package": name,
            "action": "install",
            "state": "succeeded",
            "step": first["step"],
            "from_version": None,
            "to_version": "1.0",
            "progress": 100,
            "error": None,
            "downloaded": first["downloaded"],
            "delta": False,
            "log": first["log"],
        }
        assert first["log"]
        assert all(isinstance(line, str) for line in first["log"])

        record = api.installed(name)
        assert record is not None
        assert record["version"] == "1.0"
        assert api.get("/info") == {
            "status": 200,
            "device": "kiosk-7",
            "description": "the kiosk by the door",
            "package": [record],
        }
        assert api.get("/packages") == {"status": 200, "list": [record]}
        assert api.get(f"/packages/{name}") == {"status": 200, "content.json": record}
        assert_error(api.call("GET", f"/packages/{pkg}-unknown"), 404)

        assert api.get(f"/packages/{name}/latest") == {
            "status": 200,
            "installed": "1.0",
            "latest": latest,
            "update": True,
        }
        assert_error(api.call("GET", f"/packages/{pkg}-unknown/latest"), 404)

        check = api.run_job("POST", "/check")
        assert (check["package"], check["action"]) == (None, "check")
        listed = api.get("/jobs")["list"]
        assert [job["id"] for job in listed] == [check["id"], first["id"]]  # newest first
        assert all(set(job) == JOB_KEYS for job in listed)
        assert api.get(f"/jobs/{first['id']}") == {"status": 200, "job": first}
        assert_error(api.call("GET", "/jobs/no-such-job"), 404)
        assert_error(api.call("GET", "/jobs/" + "x" * 200), 404)


# -- installing --------------------------------------------------------------------------------------


def test_install_resolves_local_against_the_config_folder(
    tmp_path: Path, device: Path, hooks_log: Path, publisher: Publisher, pkg: str
) -> None:
    name, other = f"{pkg}-app", f"{pkg}-other"
    publisher.publish(name, "1.0", before=hook(hooks_log, "before@1.0"), after=hook(hooks_log, "after@1.0"))
    files = {**default_files(name, "2.0"), "bin/start.sh": b"#!/bin/sh\necho started\n"}
    content = publisher.publish(
        name,
        "2.0",
        files,
        before=hook(hooks_log, "before@2.0"),
        after=hook(hooks_log, "after@2.0"),
        executable=("bin/start.sh",),
    )
    publisher.publish(other, "1.0")
    publisher.publish(other, "1.1")

    config_path = write_config(device)
    raw = json.loads(config_path.read_text())
    raw["packages"] = raw.pop("package")  # the original project's spelling
    config_path.write_text(json.dumps(raw))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    daemon = start_daemon(config_path, cwd=elsewhere)  # as systemd starts it, from elsewhere
    api = Api(daemon)
    try:
        job = api.install(publisher, name, local="apps/deep/app")
        assert (job["action"], job["from_version"], job["to_version"]) == ("install", None, "2.0")

        local = (device / "apps" / "deep" / "app").resolve()
        assert tree(local) == files
        assert (local / "bin" / "start.sh").stat().st_mode & 0o777 == 0o755
        assert (local / "version.txt").stat().st_mode & 0o777 == 0o644
        assert not (elsewhere / "apps").exists()

        saved = api.config()
        assert "packages" not in saved
        assert saved["package"] == [{**content, "local": "apps/deep/app"}]
        assert (saved["device"], saved["token"], saved["hook_timeout"]) == ("test-device", TOKEN, 20)

        assert read_hooks(hooks_log) == [
            # local does not exist yet: BeforeUpdate runs in its parent, created for it
            HookLine("before@2.0", name, "", "2.0", str(local), "major", str(local.parent)),
            HookLine("after@2.0", name, "", "2.0", str(local), "major", str(local)),
        ]

        # a named version, not the latest
        job = api.install(publisher, other, version="1.0")
        assert job["to_version"] == "1.0"
        assert tree(device / other) == default_files(other, "1.0")
        assert [p["version"] for p in api.config()["package"]] == ["2.0", "1.0"]

        # installed already
        before = api.config()
        assert_error(api.call("POST", "/packages", json=install_body(publisher, name)), 409)
        # bad names and bodies
        for bad in (
            {"package": "../evil"},
            {"package": "a/b"},
            {"package": ""},
            {"package": ".hidden"},
            {"package": "x" * 101},
            {"branch": "../major"},
            {"branch": "a b"},
            {"remote": ""},
            {"unknown": 1},
        ):
            assert_error(api.call("POST", "/packages", json={**install_body(publisher, "new"), **bad}), 400)
        assert_error(api.call("POST", "/packages", json={"package": f"{pkg}-new"}), 400)
        # a package or a version the server does not have: the job fails, nothing is installed
        assert "no version" in api.install(publisher, f"{pkg}-nowhere", "failed")["error"]
        assert "9.9" in api.install(publisher, f"{pkg}-nowhere", "failed", version="9.9")["error"]
        assert api.config() == before
        assert not (device / f"{pkg}-nowhere").exists()
    finally:
        api.close()
        assert daemon.stop() == 0


# -- updating ----------------------------------------------------------------------------------------


def test_update_latest_named_version_and_downgrade(
    device: Path, hooks_log: Path, publisher: Publisher, pkg: str
) -> None:
    name = f"{pkg}-app"

    def publish(version: str) -> dict[str, Any]:
        before, after = hook(hooks_log, f"before@{version}"), hook(hooks_log, f"after@{version}")
        return publisher.publish(name, version, before=before, after=after)

    publish("1.0")
    with running(write_config(device, auto_update=False)) as api:
        api.install(publisher, name, version="1.0")
        local = (device / name).resolve()
        v2 = publish("2.0")
        hooks_log.unlink()

        job = api.run_job("POST", f"/packages/{name}/update")
        assert (job["action"], job["from_version"], job["to_version"]) == ("update", "1.0", "2.0")
        assert tree(local) == default_files(name, "2.0")  # 1.0's own file is gone, not merged
        assert api.installed(name) == v2
        assert read_hooks(hooks_log) == [
            HookLine("before@2.0", name, "1.0", "2.0", str(local), "major", str(local)),
            HookLine("after@2.0", name, "1.0", "2.0", str(local), "major", str(local)),
        ]
        assert leftovers(device, name) == [f".{name}.otakit-prev"]  # kept for rollback

        # nothing newer: the job succeeds and nothing changes
        unchanged = api.state_of(name), api.config()
        job = api.run_job("POST", f"/packages/{name}/update")
        assert (job["from_version"], job["to_version"]) == ("2.0", "2.0")
        assert any("nothing to do" in line for line in job["log"])
        assert (api.state_of(name), api.config()) == unchanged
        assert len(read_hooks(hooks_log)) == 2

        # a named version that is not the latest
        publish("3.0")
        publish("4.0")
        job = api.run_job("POST", f"/packages/{name}/update", json={"version": "3.0"})
        assert (job["from_version"], job["to_version"]) == ("2.0", "3.0")
        assert tree(local) == default_files(name, "3.0")
        assert api.version(name) == "3.0"

        # lower without allow_downgrade: 400, no job, nothing changed
        unchanged = api.state_of(name), api.config()
        jobs_before = len(api.get("/jobs")["list"])
        for kwargs in (
            {"json": {"version": "1.0"}},
            {"json": {"version": "2.0", "allow_downgrade": False}},
            {"params": {"version": "1.0"}},
        ):
            error = assert_error(api.call("POST", f"/packages/{name}/update", **kwargs), 400)
            assert "allow_downgrade" in error
        assert_error(api.call("POST", f"/packages/{name}/update", json={"version": "not a version"}), 400)
        assert len(api.get("/jobs")["list"]) == jobs_before
        assert (api.state_of(name), api.config()) == unchanged

        # with allow_downgrade
        hooks_log.unlink()
        job = api.run_job(
            "POST", f"/packages/{name}/update", json={"version": "1.0", "allow_downgrade": True}
        )
        assert (job["from_version"], job["to_version"]) == ("3.0", "1.0")
        assert tree(local) == default_files(name, "1.0")
        assert api.version(name) == "1.0"
        assert [(h.tag, h.old, h.new) for h in read_hooks(hooks_log)] == [
            ("before@1.0", "3.0", "1.0"),
            ("after@1.0", "3.0", "1.0"),
        ]

        # the version in the query works as well as in the body
        job = api.run_job("POST", f"/packages/{name}/update", params={"version": "2.0"})
        assert (job["from_version"], job["to_version"]) == ("1.0", "2.0")
        assert tree(local) == default_files(name, "2.0")

        # a version the server does not have: the job fails, nothing changes
        unchanged = api.state_of(name), api.config()
        job = api.run_job("POST", f"/packages/{name}/update", "failed", json={"version": "9.0"})
        assert "9.0" in job["error"]
        assert (api.state_of(name), api.config()) == unchanged

        assert_error(api.call("POST", f"/packages/{pkg}-unknown/update"), 404)


def test_a_second_job_for_a_busy_package_is_refused(
    tmp_path: Path, device: Path, publisher: Publisher, pkg: str
) -> None:
    name, other = f"{pkg}-app", f"{pkg}-other"
    gate = tmp_path / "gate"
    wait_for_gate = f"for i in $(seq 400); do [ -e {gate} ] && exit 0; sleep 0.05; done; exit 1"
    publisher.publish(name, "1.0")
    publisher.publish(other, "1.0")
    with running(write_config(device)) as api:
        api.install(publisher, name)
        publisher.publish(name, "2.0", before=wait_for_gate)
        job = api.start_job("POST", f"/packages/{name}/update")
        assert_error(api.call("POST", f"/packages/{name}/update"), 409)
        assert_error(api.call("POST", f"/packages/{name}/rollback"), 409)
        assert_error(api.call("DELETE", f"/packages/{name}"), 409)
        assert_error(api.call("POST", f"/packages/{name}/update", json={"version": "0.5"}), 400)
        # a check of every package is not held up; another package's install waits its turn, since
        # the daemon changes files one job at a time
        check = api.run_job("POST", "/check")
        assert any(f"{name}: 2.0 is available; a job for it is running" in line for line in check["log"])
        queued = api.start_job("POST", "/packages", json=install_body(publisher, other))
        deadline = time.monotonic() + 10
        while api.get(f"/jobs/{queued['id']}")["job"]["step"] != "waiting":
            assert time.monotonic() < deadline, "the second install did not wait for the first"
            time.sleep(0.05)
        assert api.get(f"/jobs/{job['id']}")["job"]["state"] == "running"

        gate.touch()
        assert api.wait_job(job["id"])["state"] == "succeeded"
        assert api.wait_job(queued["id"])["state"] == "succeeded"
        assert api.version(other) == "1.0"
        assert tree(device / name) == default_files(name, "2.0")
        # free again
        assert api.run_job("POST", f"/packages/{name}/update")["to_version"] == "2.0"


def test_after_update_failure_rolls_back(
    device: Path, hooks_log: Path, publisher: Publisher, pkg: str
) -> None:
    failures = {f"{pkg}-fails": "exit 1", f"{pkg}-hangs": "sleep 30"}  # hook_timeout is 1.5 s
    for name in failures:
        before, after = hook(hooks_log, "before@1.0"), hook(hooks_log, "after@1.0")
        publisher.publish(name, "1.0", before=before, after=after)
    with running(write_config(device, hook_timeout=1.5)) as api:
        for name, failure in failures.items():
            api.install(publisher, name)
            local = (device / name).resolve()
            publisher.publish(
                name,
                "2.0",
                {**default_files(name, "2.0"), "version.txt": b"new"},
                before=hook(hooks_log, "before@2.0"),
                after=hook(hooks_log, "after@2.0", then=failure),
            )
            old_files, old_record = api.state_of(name)
            old_config = api.config()
            hooks_log.unlink()

            job = api.run_job("POST", f"/packages/{name}/update", "rolled_back")
            assert (job["from_version"], job["to_version"]) == ("1.0", "2.0")
            assert "AfterUpdate" in job["error"]
            assert ("exit status 1" if failure == "exit 1" else "timed out") in job["error"]

            assert api.state_of(name) == (old_files, old_record)
            assert old_files == default_files(name, "1.0")
            assert api.config() == old_config
            assert read_hooks(hooks_log) == [
                HookLine("before@2.0", name, "1.0", "2.0", str(local), "major", str(local)),
                HookLine("after@2.0", name, "1.0", "2.0", str(local), "major", str(local)),
                # the restored version's AfterUpdate brings its services back
                HookLine("after@1.0", name, "2.0", "1.0", str(local), "major", str(local)),
            ]
            assert leftovers(device, name) == []
            # 1.0 was a fresh install: there is nothing before it
            assert_error(api.call("POST", f"/packages/{name}/rollback"), 409)


def test_before_update_failure_changes_nothing(
    device: Path, hooks_log: Path, publisher: Publisher, pkg: str
) -> None:
    name = f"{pkg}-app"
    publisher.publish(name, "1.0", after=hook(hooks_log, "after@1.0"))
    with running(write_config(device)) as api:
        api.install(publisher, name)
        publisher.publish(
            name,
            "2.0",
            before=hook(hooks_log, "before@2.0", then="echo not now; exit 3"),
            after=hook(hooks_log, "after@2.0"),
        )
        old = api.state_of(name), api.config()
        hooks_log.unlink()

        job = api.run_job("POST", f"/packages/{name}/update", "failed")
        assert "BeforeUpdate" in job["error"]
        assert "exit status 3" in job["error"]
        assert any("not now" in line for line in job["log"])  # the hook's output is in the job's log
        assert (api.state_of(name), api.config()) == old
        assert [h.tag for h in read_hooks(hooks_log)] == ["before@2.0"]  # no AfterUpdate
        assert leftovers(device, name) == []


# -- refusing bad packages ---------------------------------------------------------------------------


def test_zip_entries_that_escape_are_refused(
    tmp_path: Path, device: Path, hooks_log: Path, publisher: Publisher, pkg: str
) -> None:
    absolute = Path("/abs-otakit-e2e.txt")
    assert not absolute.exists()
    with running(write_config(device)) as api:
        for kind in ("dotdot", "absolute", "symlink", "chain", "link-chain", "long-chain"):
            name, fresh = f"{pkg}-{kind}", f"{pkg}-{kind}-fresh"
            publisher.publish(name, "1.0")
            api.install(publisher, name)
            old = api.state_of(name), api.config()
            before = hook(hooks_log, f"before@{kind}")  # a refused package runs none of its hooks
            publisher.publish_zip(name, "2.0", unsafe_zip(kind), BeforeUpdate=before)
            job = api.run_job("POST", f"/packages/{name}/update", "failed")
            assert "unsafe" in job["error"], job
            assert job["step"] == "inspect", job
            assert (api.state_of(name), api.config()) == old

            publisher.publish_zip(fresh, "1.0", unsafe_zip(kind), BeforeUpdate=before)
            job = api.install(publisher, fresh, "failed")
            assert "unsafe" in job["error"], job
            assert read_hooks(hooks_log) == []
            assert api.installed(fresh) is None
            assert not (device / fresh).exists()
            assert leftovers(device, name) == leftovers(device, fresh) == []

    assert not absolute.exists()
    for folder in (tmp_path, device, tmp_path.parent):
        assert not (folder / "evil.txt").exists()
    assert not (tmp_path / "etc").exists()
    assert [path for path in tmp_path.rglob("*") if path.is_symlink()] == []
    assert list(tmp_path.rglob("passwd-copy")) == list(tmp_path.rglob("evil.txt")) == []
    assert not Path("/etc/passwd-copy").exists()


def test_a_file_that_does_not_match_its_sha256_is_refused(
    sqlite_server: RunningServer, device: Path, publisher: Publisher, pkg: str
) -> None:
    name, fresh = f"{pkg}-app", f"{pkg}-fresh"
    publisher.publish(name, "1.0")
    with running(write_config(device)) as api:
        api.install(publisher, name)
        old = api.state_of(name), api.config()
        corrupt_on_server(sqlite_server, publisher.publish(name, "2.0"))
        job = api.run_job("POST", f"/packages/{name}/update", "failed")
        assert "sha256" in job["error"]
        assert (api.state_of(name), api.config()) == old
        assert leftovers(device, name) == []
        downloads = device / ".otakit-state" / "downloads"
        assert not downloads.exists() or list(downloads.iterdir()) == []

        corrupt_on_server(sqlite_server, publisher.publish(fresh, "1.0"))
        job = api.install(publisher, fresh, "failed")
        assert "sha256" in job["error"]
        assert api.installed(fresh) is None
        assert not (device / fresh).exists()


# -- dependencies ------------------------------------------------------------------------------------


def test_dependencies_are_installed_first(
    device: Path, hooks_log: Path, publisher: Publisher, pkg: str
) -> None:
    a, b, c, d, e = (f"{pkg}-{x}" for x in "abcde")

    def publish(name: str, version: str, **depends: str) -> None:
        tag = f"{name}@{version}"
        publisher.publish(
            name,
            version,
            before=hook(hooks_log, f"before {tag}"),
            after=hook(hooks_log, f"after {tag}"),
            depends={f"{pkg}-{key}": spec for key, spec in depends.items()},
        )

    for version in ("0.9", "1.0", "1.5", "2.0"):
        publish(b, version)
    publish(a, "1.0", b=">=1.0,<2")
    with running(write_config(device)) as api:
        job = api.install(publisher, a)
        assert f"dependency {b} 1.5 first" in job["log"]
        assert [h.tag for h in read_hooks(hooks_log)] == [
            f"before {b}@1.5",
            f"after {b}@1.5",
            f"before {a}@1.0",
            f"after {a}@1.0",
        ]
        assert [(p["package"], p["version"]) for p in api.config()["package"]] == [(b, "1.5"), (a, "1.0")]
        assert tree(device / b) == default_files(b, "1.5")  # at the dependency's own local
        assert tree(device / a) == default_files(a, "1.0")

    # a chain, with a bare version meaning exactly that version; then dependencies already there
    hooks_log.unlink()
    shutil.rmtree(device)
    publish(c, "1.0")
    publish(c, "1.1")
    publish(b, "3.0", c="1.0")
    publish(a, "3.0", b=">=3")
    publish(d, "1.0", c=">=1.0")
    publish(e, "1.0", c=">=1.1")
    with running(write_config(device)) as api:
        api.install(publisher, a)
        assert [h.tag for h in read_hooks(hooks_log) if h.tag.startswith("after")] == [
            f"after {c}@1.0",
            f"after {b}@3.0",
            f"after {a}@3.0",
        ]
        installed = {p["package"]: p["version"] for p in api.config()["package"]}
        assert installed == {a: "3.0", b: "3.0", c: "1.0"}

        hooks_log.unlink()
        api.install(publisher, d)  # c 1.0 satisfies >=1.0: left alone
        assert [h.tag for h in read_hooks(hooks_log)] == [f"before {d}@1.0", f"after {d}@1.0"]

        hooks_log.unlink()
        api.install(publisher, e)  # c 1.0 does not satisfy >=1.1: updated first
        assert [(h.tag, h.old, h.new) for h in read_hooks(hooks_log)] == [
            (f"before {c}@1.1", "1.0", "1.1"),
            (f"after {c}@1.1", "1.0", "1.1"),
            (f"before {e}@1.0", "", "1.0"),
            (f"after {e}@1.0", "", "1.0"),
        ]
        assert api.version(c) == "1.1"
        assert tree(device / c) == default_files(c, "1.1")


def test_unresolvable_dependencies_install_nothing(
    device: Path, hooks_log: Path, publisher: Publisher, pkg: str
) -> None:
    a, b, a2, b2, a3 = (f"{pkg}-{x}" for x in ("a", "b", "a2", "b2", "a3"))

    def publish(name: str, version: str, depends: dict[str, str]) -> None:
        tagged = hook(hooks_log, f"{name}@{version}")
        publisher.publish(name, version, before=tagged, after=tagged, depends=depends)

    publish(a, "1", {b: "==1"})  # a cycle
    publish(b, "1", {a: "==1"})
    publish(a2, "1.0", {b2: ">=5"})  # unsatisfiable
    publish(b2, "1.0", {})
    publish(a3, "1.0", {f"{pkg}-nowhere": ">=1"})  # not on the server at all
    with running(write_config(device)) as api:
        assert "cycle" in api.install(publisher, a, "failed")["error"]
        error = api.install(publisher, a2, "failed")["error"]
        assert b2 in error
        assert ">=5" in error
        assert f"{pkg}-nowhere" in api.install(publisher, a3, "failed")["error"]

        assert api.config()["package"] == []
        assert read_hooks(hooks_log) == []
        assert [path.name for path in device.iterdir() if path.name.startswith(pkg)] == []


def test_the_original_projects_package_installs(device: Path, publisher: Publisher) -> None:
    """test.json: package "test" 0.0.1 depends on {"test": "0.0.1"}, itself; local "./test"."""
    original = json.loads((LEGACY / "test.json").read_text())
    # the server's address is the only change (the original pointed at localhost:3000)
    content = publisher.upload({**original, "remote": publisher.remote}, (LEGACY / "test.zip").read_bytes())
    newer = (LEGACY / "test-test-0.0.2.zip").read_bytes()
    publisher.publish_zip("test", "0.0.2", newer, branch="test", local="./test")
    with running(write_config(device)) as api:
        job = api.install(publisher, "test", branch="test", local="./test", version="0.0.1")
        assert job["to_version"] == "0.0.1"
        assert api.installed("test") == content  # "restore" and the self-dependency kept as they were
        assert tree(device / "test") == {"test.py": zip_member(LEGACY / "test.zip", "test.py")}

        api.run_job("POST", "/packages/test/update")
        assert tree(device / "test") == {"1.txt": zip_member(LEGACY / "test-test-0.0.2.zip", "1.txt")}


def zip_member(path: Path, name: str) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return archive.read(name)


# -- rollback and remove -----------------------------------------------------------------------------


def test_rollback_restores_the_previous_version(
    device: Path, hooks_log: Path, publisher: Publisher, pkg: str
) -> None:
    name, fresh = f"{pkg}-app", f"{pkg}-fresh"
    for version in ("1.0", "2.0"):
        before, after = hook(hooks_log, f"before@{version}"), hook(hooks_log, f"after@{version}")
        publisher.publish(name, version, before=before, after=after)
    publisher.publish(fresh, "1.0")
    with running(write_config(device, auto_update=False)) as api:
        api.install(publisher, name, version="1.0")
        local = (device / name).resolve()
        old = api.state_of(name)
        api.run_job("POST", f"/packages/{name}/update")
        assert api.version(name) == "2.0"
        hooks_log.unlink()

        job = api.run_job("POST", f"/packages/{name}/rollback")  # asked for and done: succeeded
        assert (job["action"], job["from_version"], job["to_version"]) == ("rollback", "2.0", "1.0")
        assert api.state_of(name) == old
        assert read_hooks(hooks_log) == [
            HookLine("after@1.0", name, "2.0", "1.0", str(local), "major", str(local))  # no BeforeUpdate
        ]
        # nothing older than 1.0 is kept: a second rollback must not roll forward to 2.0
        assert "no previous version" in assert_error(api.call("POST", f"/packages/{name}/rollback"), 409)
        assert api.version(name) == "1.0"
        assert not (device / f".{name}.otakit-prev").exists()

        api.install(publisher, fresh)
        assert_error(api.call("POST", f"/packages/{fresh}/rollback"), 409)
        assert_error(api.call("POST", f"/packages/{pkg}-unknown/rollback"), 404)


def test_remove_deletes_files_and_record(device: Path, publisher: Publisher, pkg: str) -> None:
    name, other = f"{pkg}-app", f"{pkg}-other"
    publisher.publish(name, "1.0")
    publisher.publish(other, "1.0")
    with running(write_config(device)) as api:
        api.install(publisher, name)
        api.install(publisher, other)
        publisher.publish(name, "2.0")
        api.run_job("POST", f"/packages/{name}/update")  # so that a previous version is kept too

        job = api.run_job("DELETE", f"/packages/{name}")
        assert (job["action"], job["from_version"]) == ("remove", "2.0")
        assert not (device / name).exists()
        assert leftovers(device, name) == []
        assert not (device / ".otakit-state" / "previous" / f"{name}.json").exists()
        assert api.installed(name) is None
        assert [p["package"] for p in api.get("/info")["package"]] == [other]
        assert tree(device / other) == default_files(other, "1.0")

        assert_error(api.call("GET", f"/packages/{name}"), 404)
        assert_error(api.call("DELETE", f"/packages/{name}"), 404)
        assert_error(api.call("POST", f"/packages/{name}/rollback"), 404)
        # and it can be installed again
        api.install(publisher, name)
        assert tree(device / name) == default_files(name, "2.0")


# -- checking and polling ----------------------------------------------------------------------------


def test_check_starts_updates_when_auto_update_is_on(device: Path, publisher: Publisher, pkg: str) -> None:
    outdated, current = f"{pkg}-outdated", f"{pkg}-current"
    publisher.publish(outdated, "1.0")
    publisher.publish(current, "1.0")
    with running(write_config(device, auto_update=True)) as api:
        api.install(publisher, outdated)
        api.install(publisher, current)
        publisher.publish(outdated, "2.0")

        check = api.run_job("POST", "/check")
        updates = [
            job for job in api.get("/jobs")["list"] if (job["action"], job["package"]) == ("update", outdated)
        ]
        assert len(updates) == 1, check
        assert any(updates[0]["id"] in line for line in check["log"]), check
        assert any(current in line and "up to date" in line for line in check["log"]), check
        assert api.wait_job(updates[0]["id"])["state"] == "succeeded"
        assert api.version(outdated) == "2.0"
        assert tree(device / outdated) == default_files(outdated, "2.0")
        assert api.version(current) == "1.0"


def test_check_only_reports_when_auto_update_is_off(device: Path, publisher: Publisher, pkg: str) -> None:
    name = f"{pkg}-app"
    publisher.publish(name, "1.0")
    with running(write_config(device, auto_update=False)) as api:
        api.install(publisher, name)
        publisher.publish(name, "2.0")
        old = api.state_of(name)

        check = api.run_job("POST", "/check")
        assert any(name in line and "2.0 is available" in line for line in check["log"]), check
        assert [job["action"] for job in api.get("/jobs")["list"]] == ["check", "install"]
        assert api.state_of(name) == old


def test_the_daemon_polls_and_updates_on_its_own(device: Path, publisher: Publisher, pkg: str) -> None:
    name = f"{pkg}-app"
    v1 = publisher.publish(name, "1.0")
    publisher.publish(name, "2.0")
    with running(write_config(device, poll_interval=1, auto_update=True, package=[v1])) as api:
        deadline = time.monotonic() + 15
        while api.version(name) != "2.0":
            assert time.monotonic() < deadline, f"not updated by polling:\n{api.daemon.log_text()}"
            time.sleep(0.1)
        assert tree(device / name) == default_files(name, "2.0")
        assert {"check", "update"} <= {job["action"] for job in api.get("/jobs")["list"]}


# -- the process -------------------------------------------------------------------------------------


def test_a_restart_keeps_state(device: Path, publisher: Publisher, pkg: str) -> None:
    name = f"{pkg}-app"
    publisher.publish(name, "1.0")
    publisher.publish(name, "2.0")
    config = write_config(device, auto_update=False)
    daemon = start_daemon(config)
    api = Api(daemon)
    try:
        api.install(publisher, name, version="1.0")
        v1 = api.state_of(name)
        api.run_job("POST", f"/packages/{name}/update")
        listed = api.get("/packages")
    finally:
        api.close()
        assert daemon.stop() == 0  # SIGTERM: a clean exit

    daemon = start_daemon(config)
    api = Api(daemon)
    try:
        assert api.get("/packages") == listed
        assert api.get("/jobs")["list"] == []  # jobs are not kept, state is
        job = api.run_job("POST", f"/packages/{name}/rollback")
        assert job["to_version"] == "1.0"
        assert api.state_of(name) == v1
    finally:
        api.close()
        assert daemon.stop() == 0


def test_the_original_projects_config_starts(device: Path) -> None:
    device.mkdir()
    raw = json.loads((LEGACY / "daemon-config.json").read_text())
    raw["flask"]["port"] = free_port()
    raw["packages"][0]["remote"] = f"http://127.0.0.1:{free_port()}/"  # nobody there
    config = device / "daemon-config.json"
    config.write_text(json.dumps(raw, indent=2))
    with running(config, token=raw["token"]) as api:
        assert api.get("/info") == {
            "status": 200,
            "device": "mytest",
            "description": "test device",
            "package": raw["packages"],
        }
        assert api.get("/packages/test")["content.json"]["version"] == "0.0.3"

        # the first rewrite uses the seed's key names and keeps the rest
        api.run_job("DELETE", "/packages/test")
        saved = json.loads(config.read_text())
        assert "packages" not in saved
        assert saved["package"] == []
        assert saved["flask"] == raw["flask"]
        assert (saved["device"], saved["description"], saved["token"]) == ("mytest", "test device", "123456")
    assert "unknown key" not in api.daemon.log_text()


def test_a_misspelt_key_is_named_in_one_warning(device: Path) -> None:
    config = write_config(device, poll_intervall=5, auto_updates=False)
    with running(config) as api:
        assert api.get("/info")["device"] == "test-device"
    warnings = [line for line in api.daemon.log_text().splitlines() if "unknown key" in line]
    assert len(warnings) == 1, warnings
    assert "'poll_intervall', 'auto_updates'" in warnings[0]
    assert json.loads(config.read_text())["poll_intervall"] == 5


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"device": "x", "token": ', "not valid JSON"),
        (json.dumps({"device": "x", "flask": {"port": 1}}), "token"),
        (json.dumps({"token": "t", "flask": {"port": 70000}}), "port"),
        (None, "cannot read"),
    ],
    ids=["broken-json", "no-token", "bad-port", "no-file"],
)
def test_an_invalid_config_stops_the_daemon_at_start(tmp_path: Path, text: str | None, problem: str) -> None:
    config = tmp_path / "daemon.json"
    if text is not None:
        config.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "otakit.daemon", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert problem in lines[0], lines[0]
    assert str(config) in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout

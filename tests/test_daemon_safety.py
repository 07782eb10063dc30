"""A real daemon refusing to install over its own files, and not retrying by itself a version that failed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_api import Api, assert_error, install_body, running
from tests.daemon_packages import Publisher, hook, read_hooks
from tests.daemons import write_config
from tests.samples import make_zip
from tests.servers import RunningServer


@pytest.fixture
def publisher(sqlite_server: RunningServer, tmp_path: Path) -> Iterator[Publisher]:
    publisher = Publisher(sqlite_server, tmp_path / "publish")
    yield publisher
    publisher.close()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_a_local_holding_the_daemons_own_files_is_refused(
    tmp_path: Path, publisher: Publisher, pkg: str
) -> None:
    device = tmp_path / "site" / "device"
    name = f"{pkg}-app"
    publisher.publish(name, "1.0")
    config = write_config(device, state_dir="state")
    (device / "state").mkdir()
    refused = {
        ".": "the daemon's config file",
        str(device): "the daemon's config file",
        "..": "the daemon's config file",
        "/": "the root folder",
        "state": "the daemon's state folder",
        "./state/../state": "the daemon's state folder",
        "state/journal": "inside the daemon's state folder",
        "daemon.json": "the daemon's config file",
    }
    with running(config) as api:
        before = _snapshot(tmp_path)
        for local, reason in refused.items():
            error = assert_error(
                api.call("POST", "/packages", json=install_body(publisher, name, local=local)), 400
            )
            assert "refusing to install" in error, (local, error)
            assert reason in error, (local, error)
        assert api.get("/jobs")["list"] == []  # refused before any job
        assert _snapshot(tmp_path) == before
        api.install(publisher, name)  # the daemon still works
        assert api.version(name) == "1.0"


def test_a_link_to_the_daemons_folder_is_seen_through(tmp_path: Path, publisher: Publisher, pkg: str) -> None:
    device = tmp_path / "device"
    config = write_config(device)
    (tmp_path / "alias").symlink_to(device)
    with running(config) as api:
        body = install_body(publisher, f"{pkg}-app", local=str(tmp_path / "alias"))
        assert "the daemon's config file" in assert_error(api.call("POST", "/packages", json=body), 400)


def test_a_dependency_whose_folder_is_the_daemons_is_refused_before_anything_runs(
    tmp_path: Path, publisher: Publisher, pkg: str
) -> None:
    device = tmp_path / "device"
    name, base = f"{pkg}-app", f"{pkg}-base"
    log = tmp_path / "hooks.log"
    # A dependency installs at the local its own content.json names: here, the daemon's folder.
    publisher.publish_zip(base, "1.1", make_zip(), local=".", BeforeUpdate=hook(log, "before-base"))
    publisher.publish(name, "1.0", depends={base: ">=1.1"})
    with running(write_config(device)) as api:
        before = _snapshot(device)
        job = api.install(publisher, name, "failed")
        assert "refusing to install" in job["error"], job
        assert "the daemon's config file" in job["error"], job
        assert read_hooks(log) == []
        assert api.installed(name) is None
        assert api.installed(base) is None
        assert {k: v for k, v in _snapshot(device).items() if not k.startswith("daemon-")} == {
            k: v for k, v in before.items() if not k.startswith("daemon-")
        }


def test_packages_may_not_share_a_folder(tmp_path: Path, publisher: Publisher, pkg: str) -> None:
    device = tmp_path / "device"
    one, two = f"{pkg}-one", f"{pkg}-two"
    publisher.publish(one, "1.0")
    publisher.publish(two, "1.0")
    with running(write_config(device)) as api:
        api.install(publisher, one, local="./opt/app")
        for local in ("./opt/app", "./opt", "./opt/app/plugins"):
            error = assert_error(
                api.call("POST", "/packages", json=install_body(publisher, two, local=local)), 400
            )
            assert f"overlaps {one}'s folder" in error
        api.install(publisher, two, local="./opt/other")


def _check(api: Api) -> dict[str, object]:
    return api.run_job("POST", "/check")


def _update_jobs(api: Api, name: str) -> list[dict[str, object]]:
    return [job for job in api.get("/jobs")["list"] if job["package"] == name and job["action"] == "update"]


def _wait_updates(api: Api, name: str) -> list[dict[str, object]]:
    jobs = _update_jobs(api, name)
    return [api.wait_job(str(job["id"])) for job in jobs]


def test_a_version_that_rolled_back_is_not_retried_by_the_poller(
    tmp_path: Path, publisher: Publisher, pkg: str
) -> None:
    device, log = tmp_path / "device", tmp_path / "hooks.log"
    name = f"{pkg}-app"
    publisher.publish(name, "1.0")
    publisher.publish(name, "2.0", before=hook(log, "before@2.0"), after=hook(log, "after@2.0", "exit 3"))
    config = write_config(device, auto_update=True)
    with running(config) as api:
        api.install(publisher, name, version="1.0")
        _check(api)
        [first] = _wait_updates(api, name)
        assert (first["state"], first["to_version"]) == ("rolled_back", "2.0")
        assert [h.tag for h in read_hooks(log)] == ["before@2.0", "after@2.0"]

        _check(api)
        assert len(_update_jobs(api, name)) == 1  # no second try
        assert [h.tag for h in read_hooks(log)] == ["before@2.0", "after@2.0"]
        assert api.version(name) == "1.0"

    with running(config) as api:  # remembered across restarts
        check = _check(api)
        assert _update_jobs(api, name) == []
        assert any("skipping 2.0, which failed here before" in line for line in check["log"]), check
        # an operator's explicit update still tries it
        api.run_job("POST", f"/packages/{name}/update", "rolled_back")
        assert [h.tag for h in read_hooks(log)].count("before@2.0") == 2

        publisher.publish(name, "2.1")  # a higher version is tried at once
        _check(api)
        [job] = [job for job in _wait_updates(api, name) if job["to_version"] == "2.1"]
        assert job["state"] == "succeeded", job
        assert api.version(name) == "2.1"
    failed = json.loads((device / ".otakit-state" / "failed.json").read_text())
    assert list(failed[name]) == ["2.0"]


def test_an_outage_is_not_remembered_as_a_failed_version(
    tmp_path: Path, pkg: str, publisher: Publisher
) -> None:
    device = tmp_path / "device"
    name = f"{pkg}-app"
    publisher.publish(name, "1.0")
    config = write_config(device)
    with running(config) as api:
        api.install(publisher, name)
        publisher.publish(name, "2.0")
    # the package's recorded server is down: the update fails, but says nothing about any version
    recorded = json.loads(config.read_text())
    recorded["package"][0]["remote"] = "http://127.0.0.1:9/"
    config.write_text(json.dumps(recorded))
    with running(config) as api:
        job = api.run_job("POST", f"/packages/{name}/update", "failed")
        assert "cannot" in str(job["error"]), job
    assert not (device / ".otakit-state" / "failed.json").exists()


def test_finished_jobs_leave_no_download_behind(tmp_path: Path, publisher: Publisher, pkg: str) -> None:
    device = tmp_path / "device"
    name = f"{pkg}-app"
    publisher.publish(name, "1.0")
    publisher.publish(name, "2.0", before="exit 1")
    publisher.publish(name, "3.0", after="exit 1")
    downloads = device / ".otakit-state" / "downloads"
    with running(write_config(device)) as api:
        api.install(publisher, name, version="1.0")
        assert list(downloads.iterdir()) == []
        api.run_job("POST", f"/packages/{name}/update", "failed", json={"version": "2.0"})  # BeforeUpdate
        assert list(downloads.iterdir()) == []
        api.run_job("POST", f"/packages/{name}/update", "rolled_back", json={"version": "3.0"})
        assert list(downloads.iterdir()) == []

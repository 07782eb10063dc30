"""Talking to a real daemon's local API in tests, and what is on its device."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.api_client import assert_error
from tests.daemon_packages import Publisher, tree
from tests.daemons import TOKEN, RunningDaemon, run_daemon

__all__ = ["FINISHED", "JOB_KEYS", "Api", "assert_error", "install_body", "leftovers", "running"]

JOB_KEYS = {
    "id",
    "package",
    "action",
    "state",
    "step",
    "from_version",
    "to_version",
    "progress",
    "error",
    "downloaded",
    "delta",
    "log",
}
FINISHED = ("succeeded", "failed", "rolled_back")

Files = dict[str, bytes | str]
Record = dict[str, Any] | None


class Api:
    """A running daemon's local API over one kept-alive connection, and what is on its device."""

    def __init__(self, daemon: RunningDaemon, token: str = TOKEN) -> None:
        self.daemon = daemon
        self.folder = daemon.folder
        self.http = httpx.Client(
            base_url=daemon.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, path, **kwargs)

    def get(self, path: str) -> dict[str, Any]:
        response = self.http.get(path)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        assert body["status"] == 200
        return body

    def start_job(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.call(method, path, **kwargs)
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["status"] == 202
        job: dict[str, Any] = body["job"]
        assert set(job) == JOB_KEYS
        return job

    def wait_job(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job: dict[str, Any] = self.get(f"/jobs/{job_id}")["job"]
            if job["state"] in FINISHED:
                assert set(job) == JOB_KEYS
                return job
            time.sleep(0.02)
        raise AssertionError(f"job {job_id} did not finish in {timeout} s:\n{self.daemon.log_text()}")

    def run_job(self, method: str, path: str, state: str = "succeeded", **kwargs: Any) -> dict[str, Any]:
        job = self.wait_job(self.start_job(method, path, **kwargs)["id"])
        assert job["state"] == state, f"{job}\n{self.daemon.log_text()}"
        return job

    def install(
        self, publisher: Publisher, name: str, state: str = "succeeded", **extra: Any
    ) -> dict[str, Any]:
        return self.run_job("POST", "/packages", state, json=install_body(publisher, name, **extra))

    def config(self) -> dict[str, Any]:
        return self.daemon.config()

    def installed(self, name: str) -> dict[str, Any] | None:
        return self.daemon.installed(name)

    def version(self, name: str) -> str | None:
        record = self.installed(name)
        return None if record is None else str(record["version"])

    def state_of(self, name: str) -> tuple[Files, Record]:
        """What is on the device for ``name``: its files and its record in the config file."""
        local = self.folder / name
        return (tree(local) if local.exists() else {}), self.installed(name)


@contextmanager
def running(config: Path, token: str = TOKEN) -> Iterator[Api]:
    with run_daemon(config) as daemon:
        api = Api(daemon, token)
        try:
            yield api
        finally:
            api.close()


def install_body(publisher: Publisher, name: str, **extra: Any) -> dict[str, Any]:
    return {"package": name, "branch": "major", "remote": publisher.server.url, "local": f"./{name}", **extra}


def leftovers(folder: Path, name: str) -> list[str]:
    """The daemon's hidden working folders beside ``name``'s install folder."""
    return sorted(path.name for path in folder.iterdir() if path.name.startswith(f".{name}.otakit-"))

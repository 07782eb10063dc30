"""``otakit-daemon install-bundle FILE``: send a bundle to the running daemon's local API and follow the
job it starts. The daemon does the work (one writer of the device's state); this only talks to it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from otakit.device_config import parse_device_config
from otakit.errors import OtakitError, UnavailableError

__all__ = ["install_through_api"]

_CHUNK = 1024 * 1024
_FINISHED = ("succeeded", "failed", "rolled_back")


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as source:
        while chunk := source.read(_CHUNK):
            yield chunk


def install_through_api(
    config_path: Path, bundle: Path, *, timeout: float, say: Callable[[str], None]
) -> int:
    """POST ``bundle`` to the daemon that ``config_path`` describes, print the job's log lines as they
    come and return 0 when the job succeeded, 1 when it failed or rolled back."""
    try:
        config = parse_device_config(config_path.read_bytes(), f"daemon config {config_path}")
    except OSError as exc:
        raise OtakitError(f"cannot read the daemon config {config_path}: {exc.strerror or exc}") from None
    if not bundle.is_file():
        raise OtakitError(f"{bundle} is not a file")
    host = config.api.host if config.api.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    base = f"http://[{host}]:{config.api.port}" if ":" in host else f"http://{host}:{config.api.port}"
    headers = {"Authorization": f"Bearer {config.token}", "Content-Type": "application/octet-stream"}
    with httpx.Client(base_url=base, headers=headers, timeout=httpx.Timeout(60, connect=5)) as client:
        try:
            answer = client.post("/bundles", content=_chunks(bundle))
        except httpx.TransportError as exc:
            raise UnavailableError(f"the daemon does not answer at {base} (is it running?): {exc}") from None
        body = _json(answer)
        if answer.status_code != 202:
            raise OtakitError(f"the daemon refused the bundle: {body.get('error') or answer.status_code}")
        job = body["job"]
        say(f"job {job['id']}: {job['action']} {job['package']}")
        shown = 0
        deadline = time.monotonic() + timeout
        while True:
            for line in job["log"][shown:]:
                say(f"  {line}")
            shown = len(job["log"])
            if job["state"] in _FINISHED:
                break
            if time.monotonic() > deadline:
                raise OtakitError(f"job {job['id']} did not finish within {timeout:g} s (it goes on)")
            time.sleep(0.2)
            job = _json(client.get(f"/jobs/{job['id']}"))["job"]
    say(f"job {job['id']}: {job['state']}" + (f": {job['error']}" if job.get("error") else ""))
    return 0 if job["state"] == "succeeded" else 1


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        value = response.json()
    except ValueError:
        raise OtakitError(f"the daemon answered HTTP {response.status_code} without JSON") from None
    if not isinstance(value, dict):
        raise OtakitError(f"the daemon answered HTTP {response.status_code} without a JSON object")
    answer: dict[str, Any] = value
    return answer

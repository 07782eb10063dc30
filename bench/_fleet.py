"""Shared pieces of the fleet benchmarks (fleet_http.py, fleet_pages.py, fleet.py): the server's
tokens, publishing a small package, enrolling devices through the real route, wrk with a Lua script.

The database of a run (a SQLite file in the temp dir, or a MariaDB database created and dropped) is
``latest_version.database``'s.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import zipfile
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

from _common import TOKEN, content_json, otakit_env

ADMIN_TOKEN = "bench-admin"
ENROLL_TOKEN = "bench-enroll"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ENROLL = {"Authorization": f"Bearer {ENROLL_TOKEN}"}
DEVICES = "/api/v1/devices"
ROLLOUTS = "/api/v1/rollouts"

T = TypeVar("T")


def fleet_env(work: Path, database_url: str, **extra: str) -> dict[str, str]:
    """``otakit_env`` plus the admin and enrollment tokens (publisher token: ``_common.TOKEN``)."""
    return {
        **otakit_env(work, database_url),
        "OTAKIT_ADMIN_TOKENS": ADMIN_TOKEN,
        "OTAKIT_ENROLL_TOKENS": ENROLL_TOKEN,
        **extra,
    }


def device_ids(count: int) -> list[str]:
    return [f"dev-{i:06d}" for i in range(count)]


def publish(url: str, package: str, branch: str, version: str, *, hold: bool = False) -> None:
    """``PUT /upload`` of a one-file zip (``?hold=1``: stored, not offered until a rollout or release)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("v.txt", f"{package} {version}\n")
    data = buffer.getvalue()
    content = content_json(package, branch, version, hashlib.sha256(data).hexdigest())
    response = httpx.put(
        url + "/upload",
        files=[
            ("content", (None, content, "application/json")),
            ("file", ("p.zip", data, "application/zip")),
        ],
        headers={"Authorization": f"Bearer {TOKEN}"},
        params={"hold": "1"} if hold else None,
        timeout=60,
    )
    if response.status_code != 200:
        raise RuntimeError(f"upload of {package} {version}: {response.status_code} {response.text}")


def start_rollout(url: str, package: str, branch: str, version: str, **policy: Any) -> dict[str, Any]:
    body = {"package": package, "branch": branch, "version": version, **policy}
    response = httpx.post(url + ROLLOUTS, json=body, headers=ADMIN, timeout=30)
    if response.status_code != 201:
        raise RuntimeError(f"POST {ROLLOUTS}: {response.status_code} {response.text}")
    rollout: dict[str, Any] = response.json()["rollout"]
    return rollout


async def run_all(items: Iterable[T], work: Callable[[T], Awaitable[None]], *, concurrency: int = 64) -> None:
    """``work(item)`` for every item, ``concurrency`` at a time; the first error is raised."""
    queue: asyncio.Queue[T] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def worker() -> None:
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await work(item)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def async_client(url: str, concurrency: int = 64) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(base_url=url, timeout=60, limits=limits)


async def enroll(
    client: httpx.AsyncClient,
    ids: Sequence[str],
    packages: Sequence[dict[str, str]] = (),
    *,
    concurrency: int = 64,
) -> dict[str, str]:
    """``POST /api/v1/devices/register`` for each id (with ``packages`` as its inventory); id -> token."""
    tokens: dict[str, str] = {}

    async def one(device: str) -> None:
        response = await client.post(
            DEVICES + "/register", json={"device": device, "packages": list(packages)}, headers=ENROLL
        )
        if response.status_code != 200:
            raise RuntimeError(f"register {device}: {response.status_code} {response.text}")
        tokens[device] = response.json()["token"]

    await run_all(ids, one, concurrency=concurrency)
    return tokens


def lua_list(values: Iterable[str]) -> str:
    return "{" + ",".join(f'"{v}"' for v in values) + "}"


def lua_cycling(ids: Sequence[str], request_lua: str, tokens: dict[str, str] | None = None) -> str:
    """A wrk script whose ``request`` cycles through ``ids`` (each wrk thread from its own offset);
    ``request_lua`` builds the request from ``ids[i]`` (and ``tokens[i]``)."""
    parts = [f"local ids = {lua_list(ids)}"]
    if tokens is not None:
        parts.append(f"local tokens = {lua_list(tokens[d] for d in ids)}")
    parts.append(
        """local n = #ids
local i = 0
local threads = 0
function setup(thread)
  thread:set("first", threads * 7919)
  threads = threads + 1
end
function init(args)
  i = (first or 0) % n
end
function request()
  i = i % n + 1
"""
        + request_lua
        + "\nend\n"
    )
    return "\n".join(parts)


def devices_total(url: str, **query: str) -> int:
    response = httpx.get(url + DEVICES, params={"limit": "1", **query}, headers=ADMIN, timeout=60)
    if response.status_code != 200:
        raise RuntimeError(f"GET {DEVICES}: {response.status_code} {response.text}")
    return int(response.json()["total"])

"""The daemon's fleet client: enrollment, heartbeats and job reports to the ``registry`` server.

Nothing here ever blocks the local API, a job or the daemon's start: it all runs in background tasks
that retry while the server is down (exponential backoff with jitter).

- ``session`` enrolls (``POST /api/v1/devices/register`` with the enrollment token) unless a device
  token is kept in ``state_dir/registry.json`` (mode 0600; never logged), then heartbeats every
  ``heartbeat_seconds`` the server gives (±10 %), with the inventory whenever it changed since the
  last heartbeat the server took. A 401 (the record was deleted) forgets the token and enrolls again.
- ``recorder`` writes the reports the job observer queues to the durable outbox (``state_dir/outbox``).
- ``sender`` delivers the outbox in order, removing each report only once the server took it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread
import httpx
from pydantic import ValidationError as PydanticValidationError

import otakit
from otakit.daemon.config_store import ConfigStore
from otakit.daemon.jobs import Job
from otakit.daemon.outbox import Outbox
from otakit.fsutil import write_atomically
from otakit.protocol import DEVICES, MAX_REPORT_BYTES, Heartbeat, PackageRef, Register, device_path

__all__ = ["FleetClient", "fit_report"]

log = logging.getLogger("otakit.daemon.registry")

_PROGRESS_STEP = 10  # report at least every 10 points of progress
_MAX_TEXT = 4000  # the protocol's bound on a log line and on a job's error
_STATE_FILE = "registry.json"
_OUTBOX = "outbox"


class _Backoff:
    """Exponential backoff with jitter: ``first``, doubling up to ``cap``, each a random 50-100 % of it."""

    def __init__(self, first: float, cap: float) -> None:
        self.first, self.cap, self.failures = first, cap, 0

    def next(self) -> float:
        delay: float = min(self.cap, self.first * 2.0**self.failures)
        self.failures += 1
        return delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not secrecy

    def reset(self) -> None:
        self.failures = 0


class _Unreachable(Exception):
    """The server could not be reached, or answered 5xx (worth trying again soon)."""


def fit_report(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` within the protocol's bounds (lines and error clipped, the oldest log lines dropped
    until it fits in MAX_REPORT_BYTES), so that the server never refuses it for its size."""
    out = dict(report)
    out["step"] = str(out.get("step") or "")[:32]
    if isinstance(out.get("error"), str):
        out["error"] = out["error"][:_MAX_TEXT]
    lines = [line[:_MAX_TEXT] for line in out.get("log") or []][-2001:]
    out["log"] = lines
    size = len(json.dumps(out, ensure_ascii=False).encode("utf-8"))
    while size > MAX_REPORT_BYTES - 1024 and lines:
        dropped = lines.pop(0)
        size -= len(json.dumps(dropped, ensure_ascii=False).encode("utf-8")) + 2
    return out


class FleetClient:
    """Keeps the device known to its fleet server. ``start`` returns at once; ``stop`` flushes the
    reports made so far to the outbox (delivered at the next start if not before) and ends the tasks.
    """

    def __init__(
        self,
        store: ConfigStore,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        outbox_limit: int = 1000,
        retry_first: float = 1.0,
        retry_cap: float = 60.0,
        retry_slow: float = 300.0,
    ) -> None:
        config = store.config
        assert config.registry, "FleetClient needs a registry"
        self.store = store
        self.registry = config.registry.rstrip("/")
        self.device = config.device
        self.state_dir = store.state_dir
        self.token_path = self.state_dir / _STATE_FILE
        self._outbox_limit = outbox_limit
        self._outbox: Outbox | None = None
        self._retry = (retry_first, retry_cap)
        self._retry_slow = retry_slow
        self._http = httpx.AsyncClient(
            base_url=self.registry,
            headers={"User-Agent": f"otakit-daemon/{otakit.__version__}"},
            timeout=httpx.Timeout(15.0),
            transport=transport,
        )
        self._token: str | None = None
        self._enrolled = asyncio.Event()  # set while a device token is held
        self._token_lost = asyncio.Event()  # the sender saw a 401: enroll again
        self._ready = asyncio.Event()  # the outbox is open
        self._pending: list[dict[str, Any]] = []  # reports not yet in the outbox
        self._pending_added = asyncio.Event()
        self._pending_dropped = 0
        self._outbox_added = asyncio.Event()  # wakes the sender
        self._server_back = asyncio.Event()  # a heartbeat got through: a waiting sender tries again now
        self._seen: dict[str, tuple[str, str, int]] = {}  # job id -> (state, step, progress) last queued
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self.heartbeat_seconds = 60.0
        self._unreachable = False  # the last heartbeat did not get through

    # -- life ------------------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._guard("session", self._session), name="otakit-fleet-session"),
            asyncio.create_task(self._guard("recorder", self._recorder), name="otakit-fleet-recorder"),
            asyncio.create_task(self._guard("sender", self._sender), name="otakit-fleet-sender"),
        ]

    async def stop(self) -> None:
        self._closing = True
        self._pending_added.set()
        if self._tasks:
            session, recorder, sender = self._tasks
            session.cancel()
            sender.cancel()
            # The recorder writes what is pending, then ends (a disk that hangs gets 30 s).
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(recorder, 30)
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._http.aclose()

    async def _guard(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run a task's loop; a bug in it is logged, and the loop started again a little later."""
        while True:
            try:
                await work()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fleet %s failed unexpectedly; starting it again in a minute", name)
                if self._closing:
                    return
                await asyncio.sleep(60)

    # -- jobs --------------------------------------------------------------------------------------
    def job_changed(self, job: Job) -> None:
        """The JobRegistry's observer: queue a report when the state or step changed, or the progress
        moved 10 points or more since the last one queued. Cheap: the disk is the recorder's."""
        last = self._seen.get(job.id)
        if (
            last is not None
            and last[:2] == (job.state, job.step)
            and abs(job.progress - last[2]) < _PROGRESS_STEP
        ):
            return
        self._seen[job.id] = (job.state, job.step, job.progress)
        if job.finished:
            self._seen.pop(job.id, None)
        if len(self._pending) >= self._outbox_limit:  # the outbox cannot be written: bound memory too
            del self._pending[0]
            if not self._pending_dropped:
                log.warning("fleet: reports cannot reach the outbox; dropping the oldest in memory")
            self._pending_dropped += 1
        self._pending.append(fit_report(job.to_json()))
        self._pending_added.set()

    async def _recorder(self) -> None:
        outbox = await anyio.to_thread.run_sync(lambda: Outbox(self.state_dir / _OUTBOX, self._outbox_limit))
        if len(outbox):
            log.info("fleet outbox: %d report(s) from before wait for the server", len(outbox))
        self._outbox = outbox
        self._ready.set()
        while True:
            await self._pending_added.wait()
            self._pending_added.clear()
            while self._pending:
                batch = list(self._pending)
                with anyio.CancelScope(shield=True):
                    try:
                        await anyio.to_thread.run_sync(outbox.put, batch)
                    except OSError as exc:
                        log.error("fleet outbox: cannot write %d report(s): %s", len(batch), exc)
                    del self._pending[: len(batch)]
                self._outbox_added.set()
            if self._closing:
                return

    async def _sender(self) -> None:
        await self._ready.wait()
        outbox = self._outbox
        assert outbox is not None
        backoff = _Backoff(*self._retry)
        while True:
            token = await self._token_held()
            self._outbox_added.clear()
            head = await anyio.to_thread.run_sync(outbox.peek)
            if head is None:
                await self._outbox_added.wait()
                continue
            seq, report = head
            try:
                response = await self._post(device_path(self.device, "reports"), token, report)
            except _Unreachable as exc:
                delay = backoff.next()
                log.log(
                    logging.WARNING if backoff.failures == 1 else logging.DEBUG,
                    "fleet: cannot deliver job reports (%d waiting): %s; trying again in %.0f s",
                    len(outbox),
                    exc,
                    delay,
                )
                self._server_back.clear()
                await self._sleep(delay, self._server_back)
                continue
            backoff.reset()
            status = response.status_code
            if status == 200:
                await anyio.to_thread.run_sync(outbox.remove, seq)
            elif status in (400, 413, 422):
                log.error(
                    "fleet: the server refused job %s's report for good (HTTP %d: %s); dropping it",
                    report.get("id"),
                    status,
                    _error(response),
                )
                await anyio.to_thread.run_sync(outbox.remove, seq)
            elif status == 401:
                self._lost(token)
            else:
                log.warning(
                    "fleet: job report refused (HTTP %d: %s); trying again in %.0f s",
                    status,
                    _error(response),
                    self._retry_slow,
                )
                await self._sleep(self._retry_slow * random.uniform(0.9, 1.1), None)  # noqa: S311

    # -- enrollment and heartbeats ---------------------------------------------------------------------
    async def _session(self) -> None:
        accepted: dict[str, Any] | None = None  # the inventory the server has, when known
        self._token = await anyio.to_thread.run_sync(self._load_token)
        if self._token is not None:
            self._enrolled.set()
            log.info(
                "fleet: %s is enrolled at %s (device token from %s)",
                self.device,
                self.registry,
                self.token_path,
            )
            accepted = await self._heartbeat(None)  # back: say so at once, and learn the interval
        while True:
            if self._token is None:
                accepted = await self._enroll()
            await self._sleep(self.heartbeat_seconds * random.uniform(0.9, 1.1), self._token_lost)  # noqa: S311
            if self._token_lost.is_set():
                self._token_lost.clear()
                continue
            accepted = await self._heartbeat(accepted)

    async def _enroll(self) -> dict[str, Any]:
        """Register until the server takes it; hold the token it gives; return the inventory sent."""
        backoff = _Backoff(*self._retry)
        while True:
            config = self.store.config
            inventory = self._inventory()
            body = Register(device=self.device, **inventory).model_dump(mode="json")
            if not config.enroll_token:
                log.warning("fleet: registry is set but enroll_token is empty: the server will refuse it")
            try:
                response = await self._post(f"{DEVICES}/register", config.enroll_token, body)
            except _Unreachable as exc:
                delay = backoff.next()
                log.log(
                    logging.WARNING if backoff.failures == 1 else logging.DEBUG,
                    "fleet: cannot enroll at %s: %s; trying again in %.0f s",
                    self.registry,
                    exc,
                    delay,
                )
                await self._sleep(delay, None)
                continue
            status = response.status_code
            answer = _json(response)
            token = answer.get("token")
            if status == 200 and isinstance(token, str) and token:
                self._set_heartbeat(answer.get("heartbeat_seconds"))
                await anyio.to_thread.run_sync(self._save_token, token)
                self._token = token
                self._token_lost.clear()
                self._enrolled.set()
                log.info(
                    "fleet: enrolled at %s as %s (device token kept in %s)",
                    self.registry,
                    self.device,
                    self.token_path,
                )
                return inventory
            if status == 409:
                why = (
                    f"the id {self.device} is taken at {self.registry}: an operator must delete the old "
                    f"record (otakit device delete {self.device})"
                )
            elif status == 401:
                why = f"{self.registry} refused the enroll_token ({_error(response)})"
            else:
                why = f"{self.registry} answered HTTP {status} ({_error(response)})"
            log.error("fleet: cannot enroll: %s; trying again in about %.0f s", why, self._retry_slow)
            await self._sleep(self._retry_slow * random.uniform(0.9, 1.1), None)  # noqa: S311

    async def _heartbeat(self, accepted: dict[str, Any] | None) -> dict[str, Any] | None:
        """One heartbeat (with the inventory if it changed); the inventory the server has after it."""
        token = self._token
        if token is None:
            return None
        inventory = self._inventory()
        body = {} if inventory == accepted else Heartbeat(**inventory).model_dump(mode="json")
        try:
            response = await self._post(device_path(self.device, "heartbeat"), token, body or None)
        except _Unreachable as exc:
            # Once per outage at warning: a fleet server down for a day is not 1,440 warnings.
            level = logging.DEBUG if self._unreachable else logging.WARNING
            log.log(
                level, "fleet: heartbeat to %s failed: %s (trying again each heartbeat)", self.registry, exc
            )
            self._unreachable = True
            return accepted
        if self._unreachable:
            log.info("fleet: %s answers again", self.registry)
            self._unreachable = False
        status = response.status_code
        if status == 200:
            self._set_heartbeat(_json(response).get("heartbeat_seconds"))
            self._server_back.set()
            return inventory
        if status == 401:
            log.warning("fleet: %s no longer knows this device's token; enrolling again", self.registry)
            self._lost(token)
            return None
        if status == 403:
            log.error("fleet: heartbeat refused: %s", _error(response))
        else:
            log.warning("fleet: heartbeat answered HTTP %d: %s", status, _error(response))
        return accepted

    def _inventory(self) -> dict[str, Any]:
        config = self.store.config
        packages = []
        for content in config.package:
            try:
                ref = PackageRef(package=content.package, branch=content.branch, version=content.version)
            except PydanticValidationError:
                continue  # nothing the daemon installed is like this; a hand-edited config might be
            packages.append(ref.model_dump())
        return {
            "description": config.description[:1000],
            "tags": list(config.tags),
            "attributes": dict(config.attributes),
            "packages": packages,
        }

    def _set_heartbeat(self, value: object) -> None:
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            self.heartbeat_seconds = min(max(float(value), 1.0), 86400.0)

    # -- the device token ----------------------------------------------------------------------------
    async def _token_held(self) -> str:
        while self._token is None:
            await self._enrolled.wait()
        return self._token

    def _lost(self, token: str) -> None:
        """The server does not know ``token`` (the device record was deleted): enroll again."""
        if self._token != token:
            return  # enrolled again already
        self._token = None
        self._enrolled.clear()
        self._token_lost.set()
        self.token_path.unlink(missing_ok=True)

    def _load_token(self) -> str | None:
        try:
            data = json.loads(self.token_path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("fleet: ignoring %s (%s): enrolling again", self.token_path, exc)
            return None
        if not isinstance(data, dict) or (data.get("registry"), data.get("device")) != (
            self.registry,
            self.device,
        ):
            log.info("fleet: %s is for another registry or device id: enrolling again", self.token_path)
            return None
        token = data.get("token")
        return token if isinstance(token, str) and token else None

    def _save_token(self, token: str) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        data = {"registry": self.registry, "device": self.device, "token": token}
        write_atomically(self.token_path, (json.dumps(data) + "\n").encode(), 0o600)
        self.token_path.chmod(0o600)  # whatever the umask

    # -- the wire ------------------------------------------------------------------------------------
    async def _post(self, path: str, token: str, body: dict[str, Any] | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        try:
            if body is None:
                response = await self._http.post(path, headers=headers)
            else:
                response = await self._http.post(path, headers=headers, json=body)
        except httpx.HTTPError as exc:
            raise _Unreachable(_describe(exc)) from None
        if response.status_code >= 500:
            raise _Unreachable(f"HTTP {response.status_code}: {_error(response)}")
        return response

    async def _sleep(self, seconds: float, wake: asyncio.Event | None) -> None:
        """Sleep ``seconds``, or less if ``wake`` is set meanwhile."""
        if wake is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), seconds)


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _error(response: httpx.Response) -> str:
    message = _json(response).get("error")
    return message if isinstance(message, str) and message else f"HTTP {response.status_code}"

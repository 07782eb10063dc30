"""The fleet's devices: enrollment, heartbeats and reports (device tokens), and the operator's view
of them (admin token). Every route checks its token before it reads a body."""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response

from otakit.errors import AuthError, ConflictError, ForbiddenError, NotFoundError
from otakit.names import check_name
from otakit.protocol import (
    DEVICES,
    MAX_REPORT_BYTES,
    DeviceAnswer,
    DeviceList,
    Done,
    Heartbeat,
    HeartbeatAnswer,
    JobReport,
    Register,
    RegisterAnswer,
)
from otakit.server.bodies import read_model
from otakit.server.db import Transaction
from otakit.server.deps import AdminDep, State, app_state, bearer_token, ended_caches, token_valid
from otakit.server.fastroute import add_request_route
from otakit.server.repository.devices import DeviceFilter, DeviceRow
from otakit.versions import parse_version
from otakit.web import answer, iso_utc
from otakit.web import declared as _ok

router = APIRouter(prefix=DEVICES, tags=["devices"])

_MAX_BODY = 64 * 1024  # registration and heartbeat bodies


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def _enrollment(request: Request) -> None:
    settings = app_state(request).settings
    token = bearer_token(request)
    if not settings.enroll_tokens:
        raise AuthError("enrollment is disabled: set OTAKIT_ENROLL_TOKENS on the server")
    if not token or not token_valid(token, settings.enroll_tokens):
        raise AuthError("a valid enrollment token is required: send 'Authorization: Bearer <token>'")


async def _device(request: Request, device_id: str) -> str:
    """The device whose token the request carries: 401 for no or an unknown token, 403 for another's."""
    check_name(device_id, "device")
    token = bearer_token(request)
    if not token:
        raise AuthError("a device token is required: send 'Authorization: Bearer <token>'")
    state = app_state(request)
    key = ("token", token_hash(token))
    stamp = state.repo.changes.stamp
    found, owner = state.cache.lookup(key, stamp)
    if not found:
        # Cached under the stamp, which a device's deletion replaces: a deleted token opens nothing.
        owner = await state.repo.devices.by_token(key[1])
        if owner is not None:
            state.cache.keep(key, stamp, owner)
    if not isinstance(owner, str):
        raise AuthError("the device token is not valid (enroll again)")
    if owner != device_id:
        raise ForbiddenError("this device token belongs to another device")
    return owner


DeviceDep = Annotated[str, Depends(_device)]


def device_json(state: State, device: DeviceRow, now: float) -> dict[str, Any]:
    last_seen = max(device.last_seen, state.seen.get(device.id) or 0.0)
    return {
        "id": device.id,
        "description": device.description,
        "tags": device.tags,
        "attributes": device.attributes,
        "packages": device.packages,
        "state": device.state,
        "pinned": device.pinned,
        "online": now - last_seen < 3 * state.settings.heartbeat_seconds,
        "last_seen": iso_utc(last_seen),
        "registered": iso_utc(device.registered),
        "jobs": device.jobs,
    }


# -- a device's own calls ----------------------------------------------------------------------------


@router.post(
    "/register", dependencies=[Depends(_enrollment)], summary="Enroll a device", responses=_ok(RegisterAnswer)
)
async def register(request: Request) -> Response:
    state = app_state(request)
    body = await read_model(request, Register, _MAX_BODY)
    token = secrets.token_urlsafe(32)
    now = time.time()
    approval = "pending" if state.settings.device_approval == "manual" else "accepted"
    try:
        device = await state.repo.devices.register(
            body.device, body, token_hash=token_hash(token), state=approval, now=now
        )
    except ConflictError:
        raise ConflictError(
            f"device {body.device} is enrolled already; an operator deletes its record first"
        ) from None
    return answer(
        200,
        device=device_json(state, device, now),
        token=token,
        heartbeat_seconds=state.settings.heartbeat_seconds,
    )


async def heartbeat(request: Request) -> Response:
    """The fleet's hot path, a route of its own (``add_heartbeat``): the token (one cached lookup),
    the optional body, ``last_seen`` marked in memory."""
    state = app_state(request)
    device_id = await _device(request, request.path_params["device_id"])
    body = await read_model(request, Heartbeat, _MAX_BODY, empty_ok=True)
    if body.model_fields_set and not await state.repo.devices.update(device_id, body):
        raise AuthError("the device token is not valid (enroll again)")
    state.seen.mark(device_id, time.time())
    return answer(200, heartbeat_seconds=state.settings.heartbeat_seconds)


def add_heartbeat(app: FastAPI) -> None:
    add_request_route(
        app,
        f"{DEVICES}/{{device_id}}/heartbeat",
        heartbeat,
        methods=["POST"],
        tags=["devices"],
        summary="A device is alive (and what it runs, when it changed)",
        description=(
            "With the device's own token. An optional JSON body with any of `packages`"
            " ([{package, branch, version}]), `tags`, `attributes` and `description` replaces them; an"
            " empty body only marks the device seen. 401 for an unknown token (enroll again), 403 for"
            " another device's."
        ),
        openapi_extra={
            "parameters": [
                {"name": "device_id", "in": "path", "required": True, "schema": {"type": "string"}}
            ]
        },
        responses=_ok(HeartbeatAnswer),
    )


@router.post(
    "/{device_id}/reports", summary="A job's state, as the device's daemon reports it", responses=_ok(Done)
)
async def report(request: Request, device_id: DeviceDep) -> Response:
    state = app_state(request)
    job = await read_model(request, JobReport, MAX_REPORT_BYTES)
    now = time.time()
    paused: list[int] = []

    async def count(tx: Transaction) -> None:
        paused.extend(
            await state.repo.rollouts.count_report(tx, device_id, job.package, job.to_version, job.state, now)
        )

    await state.repo.devices.add_report(device_id, job, now=now, then=count)
    if paused:  # an automatic pause: nobody new is offered the version, in any process
        await ended_caches(state)
    return answer(200)


# -- the operator's ----------------------------------------------------------------------------------

_Name = Annotated[str | None, Query(max_length=100)]


def device_filter(
    state: State,
    *,
    package: str | None = None,
    branch: str | None = None,
    version: str | None = None,
    tag: str | None = None,
    online: bool | None = None,
    approval: str | None = None,
    search: str | None = None,
    now: float,
) -> DeviceFilter:
    """The list's filters, checked (400 for a bad name or version), with ``online`` measured from
    ``now``: one reading for the JSON list and the console's."""
    for value, what in ((package, "package"), (branch, "branch"), (tag, "tag")):
        if value is not None:
            check_name(value, what)
    if version is not None:
        parse_version(version)
    seen_after = now - 3 * state.settings.heartbeat_seconds
    return DeviceFilter(package, branch, version, tag, approval, online, seen_after, search or None)


@router.get("", summary="Devices, sorted by id, a page at a time", responses=_ok(DeviceList))
async def list_devices(
    request: Request,
    _: AdminDep,
    package: _Name = None,
    branch: _Name = None,
    version: Annotated[str | None, Query(max_length=64)] = None,
    tag: _Name = None,
    online: bool | None = None,
    state: Annotated[str | None, Query(pattern="^(pending|accepted)$")] = None,
    q: Annotated[
        str | None, Query(max_length=100, description="the id starts with it, or the description has it")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: _Name = None,
) -> Response:
    fleet = app_state(request)
    if after is not None:
        check_name(after, "after")
    now = time.time()
    where = device_filter(
        fleet, package=package, branch=branch, version=version, tag=tag, online=online, approval=state,
        search=q, now=now,
    )  # fmt: skip
    devices, following, total = await fleet.repo.devices.page(where, after=after, limit=limit)
    listed = [device_json(fleet, device, now) for device in devices]
    return answer(200, list=listed, next=following, total=total)


async def known_device(state: State, device_id: str) -> DeviceRow:
    """The device, or 404 (400 for an id no device can have)."""
    check_name(device_id, "device")
    device = await state.repo.devices.get(device_id)
    if device is None:
        raise NotFoundError(f"no device {device_id}")
    return device


@router.get("/{device_id}", summary="One device, with its last 50 reports", responses=_ok(DeviceAnswer))
async def get_device(request: Request, device_id: str, _: AdminDep) -> Response:
    state = app_state(request)
    device = await known_device(state, device_id)
    reports = await state.repo.devices.reports(device.id)
    return answer(200, device={**device_json(state, device, time.time()), "reports": reports})


async def accept_device(state: State, device_id: str) -> None:
    """Accept a pending device (manual approval); 404 for an unknown one."""
    check_name(device_id, "device")
    if not await state.repo.devices.accept(device_id):
        raise NotFoundError(f"no device {device_id}")
    await ended_caches(state)


async def pin_device(state: State, device_id: str, pinned: bool) -> None:
    """Pin (offer nothing above what it runs) or unpin a device; 404 for an unknown one."""
    check_name(device_id, "device")
    if not await state.repo.devices.set_pinned(device_id, pinned):
        raise NotFoundError(f"no device {device_id}")
    await ended_caches(state)


async def delete_device(state: State, device_id: str) -> None:
    """Forget a device (record, reports and token: the id may enroll again); 404 for an unknown one."""
    check_name(device_id, "device")
    if not await state.repo.devices.delete(device_id):
        raise NotFoundError(f"no device {device_id}")
    state.seen.forget(device_id)
    await ended_caches(state)  # its token, and what it was offered, are forgotten in every process


@router.post("/{device_id}/accept", summary="Accept a pending device (manual approval)", responses=_ok(Done))
async def accept(request: Request, device_id: str, _: AdminDep) -> Response:
    await accept_device(app_state(request), device_id)
    return answer(200)


@router.post("/{device_id}/pin", summary="Offer the device nothing above what it runs", responses=_ok(Done))
async def pin(request: Request, device_id: str, _: AdminDep) -> Response:
    await pin_device(app_state(request), device_id, True)
    return answer(200)


@router.post("/{device_id}/unpin", summary="Offer the device updates again", responses=_ok(Done))
async def unpin(request: Request, device_id: str, _: AdminDep) -> Response:
    await pin_device(app_state(request), device_id, False)
    return answer(200)


@router.delete("/{device_id}", summary="Forget a device: record, reports and token", responses=_ok(Done))
async def delete(request: Request, device_id: str, _: AdminDep) -> Response:
    await delete_device(app_state(request), device_id)
    return answer(200)

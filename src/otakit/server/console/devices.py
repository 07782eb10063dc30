"""The console's devices pages: the fleet's list (search, filters, keyset pages) and one device with its
live jobs, its reports and the operator's actions.

What a device looks like, how the list's filters read and what accept / pin / unpin / delete do are the
JSON operator API's own functions (``otakit.server.routes.devices``): the console shows and changes the
fleet exactly as ``GET /api/v1/devices`` and its siblings do.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Query, Request
from starlette.responses import Response

from otakit.errors import ValidationError
from otakit.names import check_name
from otakit.server.console.auth import OperatorDep
from otakit.server.console.render import ConsoleRoute, Done, form_action, render
from otakit.server.deps import State, app_state
from otakit.server.routes.devices import (
    accept_device,
    delete_device,
    device_filter,
    device_json,
    known_device,
    pin_device,
)

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)

PAGE_SIZE = 50
LAST_REPORTS = 20

# A GET form sends every field, empty ones as "": empty means "any".
_Text = Annotated[str, Query(max_length=100)]
_Csrf = Annotated[str, Form(max_length=200)]


def _device_url(device_id: str) -> str:
    return f"/console/devices/{quote(device_id, safe='')}"


def _query(filters: dict[str, str], **more: str) -> str:
    """The list's URL with the non-empty filters (and ``more``), for its page links."""
    given = {key: value for key, value in {**filters, **more}.items() if value}
    return "/console/devices" + ("?" + urlencode(given) if given else "")


@router.get("/devices")
async def devices_list(
    request: Request,
    who: OperatorDep,
    q: _Text = "",
    package: _Text = "",
    version: Annotated[str, Query(max_length=64)] = "",
    tag: _Text = "",
    online: Annotated[str, Query(pattern="^(|true|false)$")] = "",
    state: Annotated[str, Query(pattern="^(|pending|accepted)$")] = "",
    after: _Text = "",
) -> Response:
    fleet = app_state(request)
    now = time.time()
    where = device_filter(
        fleet, package=package or None, version=version or None, tag=tag or None,
        online={"true": True, "false": False}.get(online), approval=state or None, search=q or None,
        now=now,
    )  # fmt: skip
    if after:
        check_name(after, "after")
    rows, following, total = await fleet.repo.devices.page(where, after=after or None, limit=PAGE_SIZE)
    filters = {"q": q, "package": package, "version": version, "tag": tag, "online": online, "state": state}
    return render(
        request,
        "devices.html",
        who,
        section="devices",
        filters=filters,
        devices=[device_json(fleet, row, now) for row in rows],
        total=total,
        next_url=_query(filters, after=following) if following else None,
        first_url=_query(filters) if after else None,
    )


async def _device_context(state: State, device_id: str) -> dict[str, Any]:
    """The device as the JSON API shows it (404 for an unknown one) and its last reports."""
    device = device_json(state, await known_device(state, device_id), time.time())
    return {
        "device": device,
        "reports": await state.repo.devices.reports(device["id"], limit=LAST_REPORTS),
        "url": _device_url(device["id"]),
    }


@router.get("/devices/{device_id}")
async def device_page(request: Request, who: OperatorDep, device_id: str) -> Response:
    context = await _device_context(app_state(request), device_id)
    return render(request, "device.html", who, section="devices", **context)


@router.get("/devices/{device_id}/jobs")
async def device_jobs(request: Request, who: OperatorDep, device_id: str) -> Response:
    """The device page's live part (htmx polls it): each package's latest job, and the last reports."""
    context = await _device_context(app_state(request), device_id)
    return render(request, "_device_jobs.html", who, **context)


async def _act(
    request: Request,
    who: OperatorDep,
    csrf: str,
    device_id: str,
    action: Callable[[State], Awaitable[None]],
    done: str,
    then: str | None = None,
) -> Response:
    """One of the operator's actions, answered from the device page (or ``then``)."""

    async def operation() -> Done:
        await action(app_state(request))
        return Done(done, then)

    return await form_action(request, who, csrf, _device_url(device_id), operation)


@router.post("/devices/{device_id}/accept")
async def accept(request: Request, who: OperatorDep, device_id: str, csrf: _Csrf = "") -> Response:
    return await _act(
        request, who, csrf, device_id, lambda s: accept_device(s, device_id), f"Device {device_id} accepted."
    )


@router.post("/devices/{device_id}/pin")
async def pin(request: Request, who: OperatorDep, device_id: str, csrf: _Csrf = "") -> Response:
    return await _act(
        request, who, csrf, device_id, lambda s: pin_device(s, device_id, True),
        f"Device {device_id} pinned: it is offered nothing above what it runs.",
    )  # fmt: skip


@router.post("/devices/{device_id}/unpin")
async def unpin(request: Request, who: OperatorDep, device_id: str, csrf: _Csrf = "") -> Response:
    return await _act(
        request, who, csrf, device_id, lambda s: pin_device(s, device_id, False),
        f"Device {device_id} unpinned: it is offered updates again.",
    )  # fmt: skip


@router.post("/devices/{device_id}/delete")
async def delete(
    request: Request,
    who: OperatorDep,
    device_id: str,
    csrf: _Csrf = "",
    confirm: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    async def forget(state: State) -> None:
        if confirm != "yes":
            raise ValidationError("tick the box to confirm the deletion: nothing was deleted")
        await delete_device(state, device_id)

    return await _act(
        request, who, csrf, device_id, forget,
        f"Device {device_id} deleted: its record, reports and token are gone.", then="/console/devices",
    )  # fmt: skip

"""The console's first page: the fleet at a glance."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from starlette.responses import Response

from otakit.server.console.auth import OperatorDep
from otakit.server.console.render import ConsoleRoute, render
from otakit.server.deps import app_state
from otakit.server.repository.devices import DeviceFilter

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)


@router.get("/")
async def overview(request: Request, who: OperatorDep) -> Response:
    state = app_state(request)
    repo = state.repo
    since = time.time() - 3 * state.settings.heartbeat_seconds
    devices = repo.devices
    total = (await devices.page(DeviceFilter(), after=None, limit=1))[2]
    online = (await devices.page(DeviceFilter(online=True, seen_after=since), after=None, limit=1))[2]
    pending = (await devices.page(DeviceFilter(state="pending"), after=None, limit=1))[2]
    active = [row for row in await repo.rollouts.find() if row.active][:20]
    return render(
        request,
        "overview.html",
        who,
        section="overview",
        devices={"total": total, "online": online, "offline": total - online, "pending": pending},
        packages=await repo.versions.packages(),
        rollouts=active,
        failures=await devices.recent_failures(10),
    )

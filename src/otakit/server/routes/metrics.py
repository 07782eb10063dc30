"""``GET /metrics``: this process's metrics in Prometheus' text format (``otakit.server.metrics``).

Each server process is scraped directly, not through the load balancer: the request counters are
the process's own. Open, or behind a bearer token when ``OTAKIT_METRICS_TOKEN`` is set.
"""

from __future__ import annotations

import logging
import time

import anyio
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

from otakit.errors import AuthError, UnavailableError
from otakit.server.deps import app_state, bearer_token, token_valid
from otakit.server.metrics import CONTENT_TYPE, Fleet, Metrics, MetricsMiddleware
from otakit.server.repository import Repository
from otakit.server.repository.devices import DeviceFilter

__all__ = ["FLEET_TIMEOUT", "ROLLOUT_STATES", "add_metrics", "fleet_now", "render", "router"]

log = logging.getLogger("otakit.server")
router = APIRouter(tags=["metrics"])

# A scrape waits this long for the database; then the fleet's gauges are left out of it.
FLEET_TIMEOUT = 2.0
ROLLOUT_STATES = ("running", "paused", "completed", "aborted")


def add_metrics(app: FastAPI) -> Metrics:
    """Give ``app`` its own registry, the request middleware and ``GET /metrics``."""
    metrics = Metrics()
    app.state.metrics = metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=lambda: app.routes)
    app.include_router(router)
    return metrics


async def fleet_now(repo: Repository, heartbeat_seconds: float, now: float) -> Fleet:
    """Devices (all, online as ``GET /api/v1/devices?online=true`` counts them, pending) and rollouts
    by state. Rollouts are counted from ``find``, which lists at most 1000 per state."""
    devices = repo.devices
    total = (await devices.page(DeviceFilter(), after=None, limit=1))[2]
    since = now - 3 * heartbeat_seconds
    online = (await devices.page(DeviceFilter(online=True, seen_after=since), after=None, limit=1))[2]
    pending = (await devices.page(DeviceFilter(state="pending"), after=None, limit=1))[2]
    rollouts = {state: len(await repo.rollouts.find(state=state)) for state in ROLLOUT_STATES}
    return Fleet(devices=total, online=online, pending=pending, rollouts=rollouts)


async def render(
    metrics: Metrics, repo: Repository, heartbeat_seconds: float, wait: float = FLEET_TIMEOUT
) -> bytes:
    """The exposition; without the fleet's gauges (and one more scrape error) when the database fails
    or takes longer than ``wait`` seconds."""
    fleet: Fleet | None = None
    try:
        with anyio.fail_after(wait):
            fleet = await fleet_now(repo, heartbeat_seconds, time.time())
    except (UnavailableError, TimeoutError) as exc:  # the request metrics are still served
        metrics.scrape_errors.inc()
        log.warning("metrics: the fleet's gauges are left out: %s", exc or type(exc).__name__)
    return metrics.render(fleet)


@router.get(
    "/metrics",
    summary="This process's metrics (Prometheus text format)",
    description=(
        "Requests by route template, method and status with latency histograms, upload and download"
        " bytes, devices (all, online, pending), rollouts by state, and the process's CPU and memory."
        " Per process: scrape each server directly. Open unless `OTAKIT_METRICS_TOKEN` is set; then"
        " it needs `Authorization: Bearer <token>`."
    ),
    response_class=PlainTextResponse,
    responses={401: {"description": "OTAKIT_METRICS_TOKEN is set and the request lacks it"}},
)
async def metrics(request: Request) -> Response:
    state = app_state(request)
    expected = state.settings.metrics_token
    if expected is not None and not token_valid(bearer_token(request), [expected]):
        raise AuthError("a metrics token is required: send 'Authorization: Bearer <token>'")
    body = await render(request.app.state.metrics, state.repo, state.settings.heartbeat_seconds)
    return Response(body, media_type=CONTENT_TYPE)

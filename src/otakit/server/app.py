"""The server application: ``create_app(settings)``; also run by ``uvicorn … --factory``."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response

import otakit
from otakit.server.blobstore import open_blobstore
from otakit.server.console import add_console
from otakit.server.deltas import DeltaMaker
from otakit.server.deps import State
from otakit.server.inflight import InFlight
from otakit.server.latest_cache import LatestCache, StampCache
from otakit.server.metrics import Metrics
from otakit.server.periodic import Periodic
from otakit.server.publish import recover
from otakit.server.repository import open_repository
from otakit.server.repository.changes import REFRESH_SECONDS
from otakit.server.routes import devices, files, meta, releases, rollouts, upload, versions
from otakit.server.routes.metrics import add_metrics
from otakit.server.seen import SeenBuffer
from otakit.server.settings import ServerSettings, load_settings
from otakit.web import answer, install_error_handlers

__all__ = ["create_app"]

log = logging.getLogger("otakit.server")


def _delta_counter(app: FastAPI) -> Callable[[str], None] | None:
    """``otakit_deltas_total{result=…}`` of the app's metrics, when they are on."""
    metrics: Metrics | None = getattr(app.state, "metrics", None)
    if metrics is None:
        return None
    return lambda result: metrics.deltas.labels(result).inc()


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    """Build the app; nothing is opened until the lifespan starts."""
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        repo = open_repository(settings.database_url)
        store = open_blobstore(settings)
        inflight = InFlight(repo, lease_seconds=settings.upload_lease_seconds)
        await repo.connect()
        try:
            applied = await repo.upgrade()
            if applied:
                log.info("database migrations applied: %s", ", ".join(applied))
            await store.ping()
            report = await recover(repo, store, inflight)
            if report.uploads or report.objects or report.incoming:
                log.warning("%s", report)
            secret = settings.console_secret or await repo.users.secret(
                "console", lambda: secrets.token_urlsafe(48)
            )
            await repo.changes.refresh()
            seen = SeenBuffer(repo.devices.touch)
            max_age = settings.latest_cache_seconds
            app.state.otakit = State(
                settings,
                repo,
                store,
                inflight,
                LatestCache(max_age=max_age),
                seen,
                StampCache(max_entries=100_000, max_age=max_age),
                DeltaMaker(
                    repo,
                    store,
                    inflight,
                    max_ratio=settings.delta_max_ratio,
                    wait_seconds=settings.delta_wait_seconds,
                    on_result=_delta_counter(app),
                    concurrency=settings.delta_concurrency,
                ),
                console_secret=secret,
            )

            async def advance_due() -> None:
                if await repo.rollouts.advance_due(time.time()):
                    await repo.changes.bump()

            async def recover_expired() -> None:
                report = await recover(repo, store, inflight, sweep=False)
                if report.uploads:
                    log.warning("%s", report)

            background = [
                Periodic("leases", inflight.renew_every, inflight.renew),
                Periodic("recovery", inflight.lease_seconds / 2, recover_expired),
                Periodic("heartbeats", 2.0, seen.flush),
                Periodic("rollouts", 2.0, advance_due),
                Periodic("changes", REFRESH_SECONDS, repo.changes.refresh),
            ]
            for task in background:
                task.start()
            try:
                yield
            finally:
                for task in background:
                    await task.stop()
                await seen.flush()  # the last heartbeats are written before the database closes
        finally:
            await store.close()
            await repo.close()

    app = FastAPI(
        title="otakit server",
        version=otakit.__version__,
        description="Stores versioned package files per package and branch and tells devices what is new.",
        lifespan=lifespan,
    )
    install_error_handlers(app)

    async def storage_error(request: Request, exc: Exception) -> Response:
        # An OSError that escapes a route is the file store failing (a full or read-only disk, a lost
        # mount): not the request's fault, so 503 and the client retries later.
        log.error("file store error on %s %s: %s", request.method, request.url.path, exc)
        return answer(503, error=f"the file store is unavailable: {getattr(exc, 'strerror', None) or exc}")

    app.add_exception_handler(OSError, storage_error)
    versions.add_latest_version(app)
    devices.add_heartbeat(app)
    for router in (
        meta.router,
        versions.router,
        files.router,
        upload.router,
        releases.router,
        devices.router,
        rollouts.router,
    ):
        app.include_router(router)
    add_console(app)
    if settings.metrics_enabled:
        add_metrics(app)
    return app

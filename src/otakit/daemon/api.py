"""The daemon's local API: device info and package operations, every route behind the device token."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import anyio
import anyio.to_thread
from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

import otakit
from otakit.bundle import open_bundle
from otakit.daemon.plan import is_upgrade
from otakit.daemon.service import Daemon
from otakit.daemon.updater import InstallRequest
from otakit.errors import NotFoundError, TooLargeError, ValidationError
from otakit.names import check_name
from otakit.web import answer, install_error_handlers

__all__ = ["create_daemon_app"]


def _daemon(request: Request) -> Daemon:
    daemon: Daemon = request.app.state.daemon
    return daemon


def token_ok(headers: Headers, expected: str) -> bool:
    """``Authorization: Bearer <token>`` or ``X-Token: <token>``, compared in constant time."""
    scheme, _, bearer = headers.get("authorization", "").partition(" ")
    supplied = bearer.strip() if scheme.lower() == "bearer" else headers.get("x-token", "")
    return bool(supplied) and hmac.compare_digest(supplied.encode(), expected.encode())


class TokenGuard:
    """Checks the device token before anything else (routing, reading the body): every route but the
    API's own description needs it."""

    _OPEN = frozenset({"/docs", "/docs/oauth2-redirect", "/openapi.json"})

    def __init__(self, app: ASGIApp, daemon: Daemon) -> None:
        self.app = app
        self.daemon = daemon

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guarded = scope["type"] == "http" and scope["path"] not in self._OPEN
        if guarded and not token_ok(Headers(scope=scope), self.daemon.store.config.token):
            error = "a valid device token is required (Authorization: Bearer <token> or X-Token)"
            await answer(401, {"WWW-Authenticate": "Bearer"}, error=error)(scope, receive, send)
            return
        await self.app(scope, receive, send)


DaemonDep = Annotated[Daemon, Depends(_daemon)]
_BINARY = {"schema": {"type": "string", "format": "binary"}}
router = APIRouter()


class InstallBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    package: str = Field(max_length=100)
    branch: str = Field(max_length=100)
    remote: str = Field(min_length=1, max_length=2000)
    local: str = Field(min_length=1, max_length=4096)
    version: str | None = Field(None, max_length=64)


class UpdateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(None, max_length=64)
    allow_downgrade: bool = False


def _name(name: str) -> str:
    return check_name(name, "package")


@router.get("/info", summary="The device and its installed packages")
async def info(daemon: DaemonDep) -> Response:
    config = daemon.store.config
    return answer(200, device=config.device, description=config.description,
                  package=[content.raw for content in config.package])  # fmt: skip


@router.get("/packages", summary="Installed packages")
async def packages(daemon: DaemonDep) -> Response:
    return answer(200, list=[content.raw for content in daemon.store.config.package])


@router.get("/packages/{name}", summary="One installed package")
async def package(name: str, daemon: DaemonDep) -> Response:
    return answer(200, **{"content.json": daemon.updater.installed(_name(name)).raw})


@router.get("/packages/{name}/latest", summary="Ask the package's server for its latest version")
async def package_latest(name: str, daemon: DaemonDep) -> Response:
    installed, latest = await daemon.latest_for(_name(name))
    return answer(200, installed=installed.version, latest=latest.raw, update=is_upgrade(installed, latest))


@router.post("/packages", status_code=202, summary="Install a new package (its latest, or a version)")
async def install(body: InstallBody, daemon: DaemonDep) -> Response:
    check_name(body.package, "package")
    check_name(body.branch, "branch")
    job = daemon.start_install(
        InstallRequest(body.package, body.branch, body.remote, body.local, body.version)
    )
    return answer(202, job=job.to_json())


@router.post("/packages/{name}/update", status_code=202, summary="Update to the latest (or a given) version")
async def update(
    name: str,
    daemon: DaemonDep,
    body: Annotated[UpdateBody | None, Body()] = None,
    version: Annotated[str | None, Query(max_length=64)] = None,
    allow_downgrade: Annotated[bool, Query()] = False,
) -> Response:
    wanted = (body.version if body else None) or version
    downgrade = (body.allow_downgrade if body else False) or allow_downgrade
    job = daemon.start_update(_name(name), wanted, downgrade)
    return answer(202, job=job.to_json())


@router.post("/packages/{name}/rollback", status_code=202, summary="Back to the kept previous version")
async def rollback(name: str, daemon: DaemonDep) -> Response:
    return answer(202, job=daemon.start_rollback(_name(name)).to_json())


@router.delete("/packages/{name}", status_code=202, summary="Remove a package's files and record")
async def remove(name: str, daemon: DaemonDep) -> Response:
    return answer(202, job=daemon.start_remove(_name(name)).to_json())


@router.post(
    "/bundles",
    status_code=202,
    summary="Install an offline bundle (the .otabundle file as the body)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def bundles(request: Request, daemon: DaemonDep) -> Response:
    """The body is streamed to ``state_dir/bundles`` (at most ``max_download_bytes``) and checked as a
    bundle (400 when it is not one, before any job); the job then installs its packages in order with
    the checks of an online install."""
    folder = daemon.updater.bundles
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.otabundle"
    limit = daemon.store.config.max_download_bytes
    try:
        size = 0
        async with await anyio.open_file(path, "xb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise TooLargeError(
                        f"the bundle is larger than the limit of {limit} bytes (max_download_bytes)"
                    )
                await out.write(chunk)
        if size == 0:
            raise ValidationError("send the bundle file as the request body")
        bundle = await anyio.to_thread.run_sync(open_bundle, path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return answer(202, job=daemon.start_bundle(bundle).to_json())


@router.post("/check", status_code=202, summary="Check every package's server now")
async def check(daemon: DaemonDep) -> Response:
    return answer(202, job=daemon.start_check().to_json())


@router.get("/jobs", summary="Jobs, newest first")
async def jobs(daemon: DaemonDep) -> Response:
    return answer(200, list=[job.to_json() for job in daemon.jobs.list()])


@router.get("/jobs/{job_id}", summary="One job")
async def job(job_id: str, daemon: DaemonDep) -> Response:
    if len(job_id) > 64:
        raise NotFoundError(f"no job {job_id[:64]}")
    return answer(200, job=daemon.jobs.get(job_id).to_json())


def create_daemon_app(daemon: Daemon) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await daemon.start()
        try:
            yield
        finally:
            await daemon.stop()

    app = FastAPI(title="otakit daemon", version=otakit.__version__, lifespan=lifespan)
    app.state.daemon = daemon
    app.add_middleware(TokenGuard, daemon=daemon)
    install_error_handlers(app)
    app.include_router(router)
    return app

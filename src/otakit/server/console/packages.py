"""The console's packages pages: every package and branch, one package's versions with release / hold /
delete, a chart of the versions the fleet runs, and an upload form.

The rules are the JSON API's own: the upload form is streamed, verified and published by
``routes.upload.receive_version`` exactly as ``PUT /upload``; release, hold and delete are
``routes.releases``' functions, so a 409 under a rollout reads the same here as there.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from starlette.responses import Response

from otakit.errors import (
    ForbiddenError,
    NotFoundError,
    OtakitError,
    TooLargeError,
    UnavailableError,
    ValidationError,
)
from otakit.names import check_name
from otakit.server.blobstore import BlobStore
from otakit.server.console.auth import CSRF_HEADER, Operator, OperatorDep, check_csrf, check_origin
from otakit.server.console.chart import version_chart
from otakit.server.console.render import STREAMED, ConsoleRoute, Done, back_to, form_action, render
from otakit.server.deps import State, app_state
from otakit.server.metrics import count_received
from otakit.server.repository import VersionRow
from otakit.server.repository.rollouts import RolloutRow
from otakit.server.routes.releases import delete_version, set_released
from otakit.server.routes.upload import UploadOptions, receive_version, truthy

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)

LIST_URL = "/console/packages"
_Csrf = Annotated[str, Form(max_length=200)]


def package_url(package: str) -> str:
    return f"{LIST_URL}/{quote(package, safe='')}"


def download_url(row: VersionRow) -> str:
    """The version's file route (``routes.files``): the URL devices download it from."""
    name, branch = quote(row.name, safe=""), quote(row.branch, safe="")
    return f"/otafiles/{name}/{branch}/{name}-{branch}-{quote(row.version, safe='')}.zip"


@dataclass(frozen=True, slots=True)
class PackageLine:
    """One package and branch on the list page."""

    name: str
    branch: str
    versions: int
    latest: str | None  # the highest released version
    rollout: RolloutRow | None  # running or paused


@dataclass(frozen=True, slots=True)
class VersionLine:
    """One version on its package's page: its file's size and upload time (None when neither the row
    nor the store can tell) and its running or paused rollout."""

    row: VersionRow
    size: int | None
    uploaded: float | None
    rollout: RolloutRow | None
    download: str


@router.get("/packages")
async def packages_list(request: Request, who: OperatorDep) -> Response:
    repo = app_state(request).repo
    lines = []
    for summary in await repo.versions.packages():
        latest = await repo.versions.latest(summary.name, summary.branch)
        lines.append(
            PackageLine(
                summary.name,
                summary.branch,
                summary.versions,
                latest.version if latest is not None else None,
                await repo.rollouts.active(summary.name, summary.branch),
            )
        )
    return render(request, "packages.html", who, section="packages", packages=lines)


# -- uploading from the browser -----------------------------------------------------------------------


class _UploadGuard:
    """The console's upload form's CSRF rule, checked while the body streams: the ``csrf`` part (the
    form's first field) or the ``X-CSRF-Token`` header must be valid before ``content`` or ``file``
    begins, so that not a byte of a forged upload is stored (403)."""

    def __init__(self, request: Request, who: Operator) -> None:
        self.request = request
        self.who = who
        self.valid = False
        if request.headers.get(CSRF_HEADER) is not None:
            check_csrf(request, who, None)  # 403 for a wrong header
            self.valid = True

    async def on_csrf(self, value: bytes) -> None:
        check_csrf(self.request, self.who, value.decode("utf-8", "replace"))
        self.valid = True

    async def on_part(self, name: str) -> None:
        if name in ("content", "file") and not self.valid:
            raise ForbiddenError("the form's CSRF token is missing or not this session's: reload the page")


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Read what is left of a refused upload's body, so that the browser, still sending, reads the
    answer instead of a reset connection. Nothing is kept; the size limit was checked already."""
    with contextlib.suppress(Exception):
        async for _ in chunks:
            pass


@router.post("/packages/upload", openapi_extra=STREAMED)
async def upload(request: Request, who: OperatorDep) -> Response:
    """``PUT /upload`` from a browser form (parts ``csrf``, ``hold``, ``force``, ``content``, ``file``,
    in that order), never buffered: see ``_UploadGuard`` and ``routes.upload.receive_version``."""
    check_origin(request)
    state = app_state(request)
    guard = _UploadGuard(request, who)
    options = UploadOptions()

    async def on_force(value: bytes) -> None:
        options.force = truthy(value.decode("latin-1"))

    async def on_hold(value: bytes) -> None:
        options.hold = truthy(value.decode("latin-1"))

    chunks = count_received(request.scope, request.stream())  # otakit_upload_bytes_total
    try:
        content = await receive_version(
            state.repo,
            state.store,
            state.inflight,
            state.settings,
            chunks,
            request.headers,
            options,
            fields={"csrf": guard.on_csrf, "force": on_force, "hold": on_hold},
            on_part=guard.on_part,
        )
    except ForbiddenError:
        await _drain(chunks)
        raise  # the console's 403 page: nothing was stored
    except TooLargeError as exc:  # not worth reading the rest
        return back_to(request, LIST_URL, str(exc), "error")
    except OtakitError as exc:
        await _drain(chunks)
        return back_to(request, LIST_URL, str(exc), "error")
    held = " (held)" if options.hold else ""
    return back_to(
        request, package_url(content.package), f"Uploaded {content.package} {content.version}{held}"
    )


# -- one package --------------------------------------------------------------------------------------


async def _size(store: BlobStore, row: VersionRow) -> int | None:
    """The stored file's size: the row's, or (rows of earlier releases) the store's; None when missing."""
    if row.size is not None:
        return row.size
    try:
        return await store.size(row.object_id)
    except (FileNotFoundError, UnavailableError):
        return None


async def _branches(state: State, package: str) -> dict[str, list[VersionLine]]:
    """The package's versions per branch (branches by name, versions highest first)."""
    rows = await state.repo.list_versions(package)
    sizes = [await _size(state.store, row) for row in rows]
    rollouts: dict[str, RolloutRow | None] = {}
    for branch in sorted({row.branch for row in rows}):
        rollouts[branch] = await state.repo.rollouts.active(package, branch)
    branches: dict[str, list[VersionLine]] = {branch: [] for branch in rollouts}
    for row, size in zip(rows, sizes, strict=True):
        active = rollouts[row.branch]
        rollout = active if active is not None and active.version_key == row.version_key else None
        branches[row.branch].append(VersionLine(row, size, row.uploaded, rollout, download_url(row)))
    return branches


@router.get("/packages/{package}")
async def package_page(request: Request, who: OperatorDep, package: str) -> Response:
    check_name(package, "package")
    state = app_state(request)
    branches = await _branches(state, package)
    if not branches:
        raise NotFoundError(f"no version of {package} is stored")
    counts = await state.repo.devices.versions_run(package)
    return render(
        request,
        "package.html",
        who,
        section="packages",
        package=package,
        branches=branches,
        counts=counts,
        chart=version_chart(counts, title=f"Versions of {package} the fleet runs"),
        url=package_url(package),
    )


# -- release, hold, delete ----------------------------------------------------------------------------


def _what(package: str, branch: str, version: str) -> str:
    return f"{package} {version} ({branch})"


async def _set_released(
    request: Request, who: Operator, package: str, branch: str, version: str, csrf: str, released: bool
) -> Response:
    async def operation() -> Done:
        state = app_state(request)
        await set_released(state.repo, package, branch, version, released)
        return Done(f"{'Released' if released else 'Held'} {_what(package, branch, version)}")

    return await form_action(request, who, csrf, package_url(package), operation)


@router.post("/packages/{package}/{branch}/{version}/release")
async def release(
    request: Request, who: OperatorDep, package: str, branch: str, version: str, csrf: _Csrf = ""
) -> Response:
    return await _set_released(request, who, package, branch, version, csrf, True)


@router.post("/packages/{package}/{branch}/{version}/hold")
async def hold(
    request: Request, who: OperatorDep, package: str, branch: str, version: str, csrf: _Csrf = ""
) -> Response:
    return await _set_released(request, who, package, branch, version, csrf, False)


@router.post("/packages/{package}/{branch}/{version}/delete")
async def delete(
    request: Request,
    who: OperatorDep,
    package: str,
    branch: str,
    version: str,
    csrf: _Csrf = "",
    confirm: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    async def operation() -> Done:
        if not confirm:
            raise ValidationError(f"tick the box to confirm deleting {_what(package, branch, version)}")
        state = app_state(request)
        await delete_version(state.repo, state.store, state.inflight, package, branch, version)
        left = await state.repo.list_versions(package)  # the last one gone: back to the list
        return Done(f"Deleted {_what(package, branch, version)}", None if left else LIST_URL)

    return await form_action(request, who, csrf, package_url(package), operation)

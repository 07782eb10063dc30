"""What versions there are: ``/latestVersion`` and ``/getVersion``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from otakit.errors import NotFoundError
from otakit.names import check_name
from otakit.server.deps import RepoDep, State
from otakit.server.repository import VersionRow
from otakit.versions import version_key
from otakit.web import answer, body_etag, etag_matches, json_answer

router = APIRouter(tags=["versions"])

PackageQuery = Annotated[str, Query(description="package name", max_length=200)]


async def latest_answer(request: Request) -> Response:
    """``/latestVersion`` itself, as a plain Starlette endpoint: the hot path of every polling device.

    It skips FastAPI's parameter machinery (which cost most of the time of an answer) and serves from
    the per-process cache, which a commit anywhere invalidates (see ``latest_cache``).
    """
    package = check_name(request.query_params.get("package"), "package")
    branch = check_name(request.query_params.get("branch"), "branch")
    state: State = request.app.state.otakit
    key = (package, branch)
    stamp = state.store.stamp()
    cached = state.latest.get(key, stamp)
    if cached is None:
        row = await state.repo.latest(package, branch)
        if row is None:
            raise NotFoundError(f"no version of {package} on branch {branch}")
        # The stored text is spliced in as it is: the values go out exactly as uploaded.
        body = b'{"status":200,"content.json":' + row.content.encode("utf-8") + b"}"
        cached = body, body_etag(body)
        state.latest.put(key, stamp, *cached)
    body, etag = cached
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag_matches(request, etag):
        return Response(status_code=304, headers=headers)
    return json_answer(body, 200, headers)


@router.get("/latestVersion", summary="The highest version of a package on a branch")
async def latest_version(
    request: Request,
    package: PackageQuery,
    branch: Annotated[str, Query(description="branch (channel)", max_length=200)],
) -> Response:
    """Documents the route; ``app.py`` mounts ``latest_answer`` in front of it."""
    return await latest_answer(request)


def _listed(row: VersionRow) -> dict[str, object]:
    return {"name": row.name, "branch": row.branch, "version": row.version, "content": row.content_json}


@router.get("/getVersion", summary="Versions of a package, highest first")
async def get_version(
    repo: RepoDep,
    package: PackageQuery,
    branch: Annotated[str | None, Query(description="only this branch", max_length=200)] = None,
    version: Annotated[str | None, Query(description="only this version", max_length=200)] = None,
) -> Response:
    check_name(package, "package")
    if branch is not None:
        check_name(branch, "branch")
    key = version_key(version) if version is not None else None
    rows = await repo.list_versions(package, branch, key)
    if not rows:
        raise NotFoundError(f"no version of {package} matches")
    return answer(200, list=[_listed(row) for row in rows])

"""What versions there are: ``/latestVersion`` (``add_latest_version``) and ``/getVersion`` (``router``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import Response

from otakit.errors import NotFoundError
from otakit.names import MAX_NAME_LENGTH, NAME_PATTERN, check_name
from otakit.rollout import Device, StoredVersion, offer
from otakit.server.deps import RepoDep, State
from otakit.server.fastroute import add_request_route
from otakit.server.repository import VersionKey, VersionRow
from otakit.server.repository.rollouts import RolloutRow
from otakit.versions import MAX_VERSION_LENGTH, version_key
from otakit.web import answer, body_etag, etag_matches, json_answer

router = APIRouter(tags=["versions"])
_T = TypeVar("_T")

# The schema documents the rule; ``check_name`` enforces it, with its own message (a 400).
_NAME_LIMITS: dict[str, Any] = {"maxLength": MAX_NAME_LENGTH, "pattern": NAME_PATTERN}
_NAME_SCHEMA: dict[str, Any] = {"type": "string", **_NAME_LIMITS}
_NAME_RULE = (
    "letters, digits, '.', '_' and '-', starting with a letter or digit,"
    f" at most {MAX_NAME_LENGTH} characters"
)
PackageQuery = Annotated[
    str, Query(description=f"package name: {_NAME_RULE}", json_schema_extra=_NAME_LIMITS)
]


def _name_parameter(name: str, what: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": True,
        "description": f"{what}: {_NAME_RULE}",
        "schema": _NAME_SCHEMA,
    }


_ETAG_HEADER = {"description": "the answer's tag, for If-None-Match", "schema": {"type": "string"}}
_LATEST_PARAMETERS = [
    _name_parameter("package", "package name"),
    _name_parameter("branch", "branch (channel)"),
    {
        "name": "device",
        "in": "query",
        "required": False,
        "description": (
            "an enrolled device's id: answered a running rollout's version when the device is in its"
            " cohort, what it runs when pinned, else the highest released version"
        ),
        "schema": _NAME_SCHEMA,
    },
    {
        "name": "If-None-Match",
        "in": "header",
        "description": "the ETag of an earlier answer: 304, without a body, while it is still the answer",
        "schema": {"type": "string"},
    },
]
_LATEST_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the highest version's content.json, as uploaded",
        "headers": {"ETag": _ETAG_HEADER},
    },
    304: {
        "description": "If-None-Match names the answer's ETag: nothing changed",
        "headers": {"ETag": _ETAG_HEADER},
    },
    400: {"description": "package or branch missing, or not a name"},
    404: {"description": "no version of the package on that branch"},
    503: {"description": "the database is unreachable (retry later)"},
}


async def latest_version(request: Request) -> Response:
    """The hot path of every polling device: FastAPI's machinery cost most of the time of an answer,
    so the route reads its query itself (``_LATEST_PARAMETERS`` documents it) and serves from the
    per-process cache, which a commit anywhere invalidates (see ``latest_cache``)."""
    package = check_name(request.query_params.get("package"), "package")
    branch = check_name(request.query_params.get("branch"), "branch")
    state: State = request.app.state.otakit
    device = request.query_params.get("device")
    if device is not None:
        body, etag = await offered_to(state, package, branch, check_name(device, "device"))
    else:
        key = (package, branch)
        stamp = state.repo.changes.stamp
        cached = state.latest.get(key, stamp)
        if cached is None:
            row = await state.repo.latest(package, branch)
            if row is None:
                raise NotFoundError(f"no version of {package} on branch {branch}")
            cached = _body(row)
            state.latest.put(key, stamp, *cached)
        body, etag = cached
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag_matches(request, etag):
        return Response(status_code=304, headers=headers)
    return json_answer(body, 200, headers)


def _body(row: VersionRow) -> tuple[bytes, str]:
    # The stored text is spliced in as it is: the values go out exactly as uploaded.
    body = b'{"status":200,"content.json":' + row.content.encode("utf-8") + b"}"
    return body, body_etag(body)


async def _cached(state: State, stamp: object, key: tuple[str, ...], load: Callable[[], Awaitable[_T]]) -> _T:
    found, value = state.cache.lookup(key, stamp)
    if not found:
        value = await load()
        state.cache.keep(key, stamp, value)
    return value  # type: ignore[return-value]


async def offered_to(state: State, package: str, branch: str, device_id: str) -> tuple[bytes, str]:
    """The answer for an identified device (``otakit.rollout.offer``): a running rollout's version when
    the device is in its cohort, what it runs when pinned, else the highest released version.

    What it reads is cached under the store's stamp (see ``latest_cache``), which every upload,
    release, rollout change and device change replaces: a steady fleet's polls cost no query.
    """
    repo = state.repo
    stamp = state.repo.changes.stamp
    device: Device | None = await _cached(
        state, stamp, ("view", device_id, package), lambda: repo.devices.offer_view(device_id, package)
    )
    active: RolloutRow | None = None
    if device is not None:
        active = await _cached(
            state, stamp, ("rollout", package, branch), lambda: repo.rollouts.active(package, branch)
        )
    released: VersionRow | None = await _cached(
        state, stamp, ("released", package, branch), lambda: repo.latest(package, branch)
    )
    stored = None
    if device is not None and device.pinned and device.runs is not None:
        stored = [StoredVersion(r.version, r.released) for r in await repo.list_versions(package, branch)]
    chosen = offer(device, active.rules if active else None, released.version if released else None, stored)
    row = released
    if chosen is not None and (released is None or chosen != released.version):
        key = VersionKey(package, branch, version_key(chosen))
        row = await _cached(state, stamp, ("row", package, branch, key.version_key), lambda: repo.get(key))
    if chosen is None or row is None:  # none, or deleted since it was chosen
        raise NotFoundError(f"no version of {package} on branch {branch} for device {device_id}")
    found, answer_of_row = state.cache.lookup(("answer", row.object_id), stamp)
    if not found:
        answer_of_row = _body(row)
        state.cache.keep(("answer", row.object_id), stamp, answer_of_row)
    return answer_of_row  # type: ignore[return-value]


def add_latest_version(app: FastAPI) -> None:
    """Register ``/latestVersion`` on ``app`` itself rather than on ``router``: FastAPI matches the
    routes of an included router twice a request, which cost this route some 15 % of its requests/s
    (``bench/latest_version.py``)."""
    add_request_route(
        app,
        "/latestVersion",
        latest_version,
        methods=["GET"],
        tags=["versions"],
        summary="The highest version of a package on a branch",
        description=(
            '`{"status": 200, "content.json": {…}}` for the **highest** version by PEP 440 order'
            " (`0.0.10` > `0.0.9`, `1.0rc1` < `1.0`), not the newest upload. The answer carries an"
            " `ETag`; a request whose `If-None-Match` names it gets a 304 until an upload changes it."
        ),
        openapi_extra={"parameters": _LATEST_PARAMETERS},
        responses=_LATEST_RESPONSES,
    )


def _listed(row: VersionRow) -> dict[str, object]:
    return {
        "name": row.name,
        "branch": row.branch,
        "version": row.version,
        "content": row.content_json,
        "released": row.released,
    }


@router.get(
    "/getVersion",
    summary="Versions of a package, highest first",
    description="Held versions too; each entry's `released` says whether /latestVersion offers it.",
)
async def get_version(
    repo: RepoDep,
    package: PackageQuery,
    branch: Annotated[
        str | None, Query(description=f"only this branch: {_NAME_RULE}", json_schema_extra=_NAME_LIMITS)
    ] = None,
    version: Annotated[
        str | None,
        Query(
            description=f"only this version (PEP 440, at most {MAX_VERSION_LENGTH} characters)",
            json_schema_extra={"maxLength": MAX_VERSION_LENGTH},
        ),
    ] = None,
) -> Response:
    check_name(package, "package")
    if branch is not None:
        check_name(branch, "branch")
    key = version_key(version) if version is not None else None
    rows = await repo.list_versions(package, branch, key)
    if not rows:
        raise NotFoundError(f"no version of {package} matches")
    return answer(200, list=[_listed(row) for row in rows])

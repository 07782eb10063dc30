"""Releasing and holding versions, by admin token (DESIGN.md, "Versions: released or held").

``POST /api/v1/versions/{package}/{branch}/{version}/release`` offers a stored version to every device
now; ``…/hold`` stops offering it (devices that have it keep it). Either ends every process's cached
``/latestVersion`` answers exactly as an upload's commit does, by bumping the database's change counter.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from otakit.errors import ConflictError, NotFoundError
from otakit.names import check_name
from otakit.protocol import VERSIONS, Done
from otakit.server.blobstore import BlobStore
from otakit.server.deps import AdminDep, InFlightDep, RepoDep, StoreDep
from otakit.server.inflight import InFlight
from otakit.server.publish import unpublish
from otakit.server.repository import Repository, VersionKey
from otakit.server.repository.rollouts import RolloutRow
from otakit.versions import version_key
from otakit.web import answer

__all__ = ["delete_version", "router", "set_released"]

router = APIRouter(prefix=VERSIONS, tags=["admin"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Done, "description": '`{"status": 200}`'},
    400: {"description": "package or branch not a name, or version not a PEP 440 version"},
    401: {"description": "no valid admin token (a publisher token is not one)"},
    404: {"description": "no such version"},
    409: {"description": "hold, delete: the version has a running or paused rollout"},
    503: {"description": "the database or file store is unavailable (retry later)"},
}


def _under_rollout(rollout: RolloutRow, version: str, verb: str) -> ConflictError:
    return ConflictError(
        f"{rollout.package} {version} has a {rollout.state} rollout ({rollout.id}): "
        f"abort it to {verb} the version"
    )


async def set_released(repo: Repository, package: str, branch: str, version: str, released: bool) -> None:
    """Release (offer to everyone) or hold a stored version: the admin API's and the console's rule.

    ``NotFoundError`` without such a version; ``ConflictError`` to hold one under a running or paused
    rollout (releasing it by hand ends that rollout ``completed``)."""
    check_name(package, "package")
    check_name(branch, "branch")
    key = VersionKey(package, branch, version_key(version))
    rollout = await repo.rollouts.of_version(package, branch, key.version_key)
    if rollout is not None and not released:
        raise _under_rollout(rollout, version, "hold")
    if not await repo.set_released(key, released):
        raise NotFoundError(f"no version {version} of {package} on branch {branch}")
    if rollout is not None:  # released by hand: its rollout is over
        with contextlib.suppress(ConflictError):  # ended by another writer meanwhile
            await repo.rollouts.apply(rollout, "release", now=time.time())
    # As after an upload's commit, before the 200: no process answers from a cache made before it.
    await repo.changes.bump()


async def delete_version(
    repo: Repository, store: BlobStore, inflight: InFlight, package: str, branch: str, version: str
) -> None:
    """Remove a version's row and file together, crash-safe; the admin API's and the console's rule.

    ``NotFoundError`` without such a version; ``ConflictError`` under a running or paused rollout."""
    check_name(package, "package")
    check_name(branch, "branch")
    key = VersionKey(package, branch, version_key(version))
    rollout = await repo.rollouts.of_version(package, branch, key.version_key)
    if rollout is not None:
        raise _under_rollout(rollout, version, "delete")
    if not await unpublish(repo, store, inflight, key):
        raise NotFoundError(f"no version {version} of {package} on branch {branch}")


@router.post(
    "/{package}/{branch}/{version}/release",
    summary="Offer a stored version to every device now",
    responses=_RESPONSES,
)
async def release(package: str, branch: str, version: str, repo: RepoDep, admin: AdminDep) -> Response:
    await set_released(repo, package, branch, version, True)
    return answer(200)


@router.post(
    "/{package}/{branch}/{version}/hold",
    summary="Stop offering a version (devices that have it keep it)",
    responses=_RESPONSES,
)
async def hold(package: str, branch: str, version: str, repo: RepoDep, admin: AdminDep) -> Response:
    await set_released(repo, package, branch, version, False)
    return answer(200)


@router.delete(
    "/{package}/{branch}/{version}",
    summary="Delete a version: its row and file together, crash-safe as an upload",
    responses=_RESPONSES,
)
async def delete(
    package: str,
    branch: str,
    version: str,
    repo: RepoDep,
    store: StoreDep,
    inflight: InFlightDep,
    admin: AdminDep,
) -> Response:
    await delete_version(repo, store, inflight, package, branch, version)
    return answer(200)

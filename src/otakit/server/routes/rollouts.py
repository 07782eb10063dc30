"""Staged rollouts (admin token): start one, watch it, advance, pause, resume or abort it.

The rules are ``otakit.rollout``'s; every change is compare-and-set in the database
(``Rollouts.move``), so two servers or two operators never apply one change twice. Each change ends the
cached ``/latestVersion`` answers at once, as an upload does.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from otakit.errors import ConflictError, NotFoundError
from otakit.names import check_name
from otakit.protocol import ROLLOUTS, RolloutAnswer, RolloutCreate, RolloutList
from otakit.rollout import OPERATOR_PAUSE, Policy, Rollout
from otakit.server.bodies import read_model
from otakit.server.deps import AdminDep, State, app_state, ended_caches
from otakit.server.repository.rollouts import RolloutRow
from otakit.server.repository.versions import VersionKey
from otakit.versions import parse_version, version_key
from otakit.web import answer, iso_utc
from otakit.web import declared as _ok

router = APIRouter(prefix=ROLLOUTS, tags=["rollouts"])

_MAX_BODY = 64 * 1024

OperatorAction = Literal["advance", "pause", "resume", "abort"]
OPERATOR_ACTIONS: tuple[OperatorAction, ...] = ("advance", "pause", "resume", "abort")


def rollout_json(row: RolloutRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "package": row.package,
        "branch": row.branch,
        "version": row.version,
        "phases": list(row.policy.phases),
        "phase": row.phase,
        "percent": row.policy.phases[row.phase],
        "state": row.state,
        "paused_reason": row.paused_reason,
        "max_failure_rate": row.policy.max_failure_rate,
        "min_reports": row.policy.min_reports,
        "phase_seconds": row.policy.phase_seconds,
        "tags": list(row.policy.tags),
        "created": iso_utc(row.created),
        "updated": iso_utc(row.updated),
        "counts": {
            "succeeded": row.counts.succeeded,
            "failed": row.counts.failed,
            "in_progress": row.counts.in_progress,
        },
        "failure_rate": row.counts.failure_rate,
    }


async def start_rollout(state: State, body: RolloutCreate) -> RolloutRow:
    """Start a staged rollout of a held version (``POST /api/v1/rollouts`` and the console's form).

    400 for a bad policy, 404 for no such version, 409 when it is released already, lower than the
    released one, or its package and branch have a running or paused rollout.
    """
    policy = Policy(
        tuple(body.phases), body.max_failure_rate, body.min_reports, body.phase_seconds, tuple(body.tags)
    )
    versions = state.repo.versions
    stored = await versions.get(VersionKey(body.package, body.branch, version_key(body.version)))
    if stored is None:
        raise NotFoundError(f"no version {body.version} of {body.package} on branch {body.branch}")
    if stored.released:
        raise ConflictError(f"{body.package} {stored.version} is released already: nothing to roll out")
    released = await versions.latest(body.package, body.branch)
    if released is not None and parse_version(released.version) > parse_version(stored.version):
        raise ConflictError(f"{body.package} {stored.version} is lower than the released {released.version}")
    rules = Rollout.start(body.package, body.branch, stored.version, policy)
    try:
        row = await state.repo.rollouts.create(rules, now=time.time())
    except ConflictError:
        raise ConflictError(
            f"{body.package} on branch {body.branch} has a running or paused rollout already"
        ) from None
    await ended_caches(state)
    return row


@router.post(
    "", status_code=201, summary="Start a staged rollout of a held version", responses=_ok(RolloutAnswer, 201)
)
async def create(request: Request, _: AdminDep) -> Response:
    body = await read_model(request, RolloutCreate, _MAX_BODY)
    return answer(201, rollout=rollout_json(await start_rollout(app_state(request), body)))


@router.get("", summary="Rollouts, newest first", responses=_ok(RolloutList))
async def list_rollouts(
    request: Request,
    _: AdminDep,
    package: Annotated[str | None, Query(max_length=100)] = None,
    branch: Annotated[str | None, Query(max_length=100)] = None,
    state: Annotated[str | None, Query(pattern="^(running|paused|completed|aborted)$")] = None,
) -> Response:
    if package is not None:
        check_name(package)
    if branch is not None:
        check_name(branch, "branch")
    rows = await app_state(request).repo.rollouts.find(package, branch, state)
    return answer(200, list=[rollout_json(row) for row in rows])


async def find_rollout(state: State, rollout_id: int) -> RolloutRow:
    """The rollout, or NotFoundError (404)."""
    row = await state.repo.rollouts.get(rollout_id)
    if row is None:
        raise NotFoundError(f"no rollout {rollout_id}")
    return row


@router.get("/{rollout_id}", summary="One rollout, with its counts", responses=_ok(RolloutAnswer))
async def get_rollout(request: Request, rollout_id: int, _: AdminDep) -> Response:
    return answer(200, rollout=rollout_json(await find_rollout(app_state(request), rollout_id)))


async def act(state: State, rollout_id: int, action: OperatorAction) -> RolloutRow:
    """An operator's ``action`` on the rollout, compare-and-set (the JSON routes and the console's
    buttons): 404 for no such rollout, 409 from a state that does not allow it."""
    reason = OPERATOR_PAUSE if action == "pause" else None
    row = await state.repo.rollouts.apply(
        await find_rollout(state, rollout_id), action, reason, now=time.time()
    )
    await ended_caches(state)
    return row


async def _act(request: Request, rollout_id: int, action: OperatorAction) -> Response:
    return answer(200, rollout=rollout_json(await act(app_state(request), rollout_id, action)))


@router.post(
    "/{rollout_id}/advance",
    summary="Move to the next phase (the last one completes it)",
    responses=_ok(RolloutAnswer),
)
async def advance(request: Request, rollout_id: int, _: AdminDep) -> Response:
    return await _act(request, rollout_id, "advance")


@router.post("/{rollout_id}/pause", summary="Offer the version to nobody new", responses=_ok(RolloutAnswer))
async def pause(request: Request, rollout_id: int, _: AdminDep) -> Response:
    return await _act(request, rollout_id, "pause")


@router.post("/{rollout_id}/resume", summary="Continue a paused rollout", responses=_ok(RolloutAnswer))
async def resume(request: Request, rollout_id: int, _: AdminDep) -> Response:
    return await _act(request, rollout_id, "resume")


@router.post(
    "/{rollout_id}/abort", summary="End the rollout; the version stays held", responses=_ok(RolloutAnswer)
)
async def abort(request: Request, rollout_id: int, _: AdminDep) -> Response:
    return await _act(request, rollout_id, "abort")

"""The console's rollouts pages: the list with a form to start one, and one rollout with its live phase,
progress, counts and the Advance / Pause / Resume / Abort buttons.

The rules are not copied here: the form is parsed into the API's own ``RolloutCreate`` and handed to
``routes.rollouts.start_rollout``; the buttons call ``routes.rollouts.act``; which buttons show is asked
of ``otakit.rollout.transition``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from pydantic import ValidationError as PydanticValidationError
from starlette.responses import Response

from otakit.content import describe_pydantic_error
from otakit.errors import ConflictError, ValidationError
from otakit.protocol import RolloutCreate
from otakit.rollout import transition
from otakit.server.console.auth import Operator, OperatorDep
from otakit.server.console.render import ConsoleRoute, Done, form_action, render
from otakit.server.deps import State, app_state
from otakit.server.repository.rollouts import RolloutRow
from otakit.server.routes.rollouts import OPERATOR_ACTIONS, OperatorAction, act, find_rollout, start_rollout
from otakit.versions import parse_version

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)

_LIST = "/console/rollouts"
_Csrf = Annotated[str, Form(max_length=200)]
_Field = Annotated[str, Form(max_length=2000)]
_STATES = "^(running|paused|completed|aborted)$"
_DONE: dict[OperatorAction, str] = {
    "advance": "Advanced",
    "pause": "Paused",
    "resume": "Resumed",
    "abort": "Aborted",
}


def _page(rollout_id: int) -> str:
    return f"{_LIST}/{rollout_id}"


@dataclass(frozen=True, slots=True)
class HeldVersion:
    """A held version the start form offers; ``value`` is what its ``<option>`` sends."""

    package: str
    branch: str
    version: str

    @property
    def value(self) -> str:
        return f"{self.package}/{self.branch}/{self.version}"  # names and versions never hold a "/"


async def _held_versions(state: State) -> list[HeldVersion]:
    """Every held version above its branch's highest released one, by package and branch, highest
    first: what could be rolled out (``start_rollout`` refuses a lower one)."""
    repo = state.repo
    held = []
    for summary in await repo.versions.packages():
        rows = await repo.list_versions(summary.name, summary.branch)
        released = next((parse_version(row.version) for row in rows if row.released), None)
        for row in rows:
            if not row.released and (released is None or parse_version(row.version) > released):
                held.append(HeldVersion(row.name, row.branch, row.version))
    return held


def allowed_actions(row: RolloutRow) -> list[OperatorAction]:
    """The operator actions the rules allow from the rollout's state: the buttons its page shows."""
    allowed = []
    for action in OPERATOR_ACTIONS:
        try:
            transition(row.state, action, row.phase, row.policy.phases)
        except ConflictError:
            continue
        allowed.append(action)
    return allowed


# -- the list and the start form ----------------------------------------------------------------------


@router.get("/rollouts")
async def rollouts_page(
    request: Request,
    who: OperatorDep,
    state: Annotated[str | None, Query(pattern=_STATES)] = None,
    start: Annotated[str | None, Query(max_length=400)] = None,
) -> Response:
    """``state`` filters the list; ``start`` (``package/branch/version``) preselects the form's version."""
    app = app_state(request)
    return render(
        request,
        "rollouts.html",
        who,
        section="rollouts",
        rollouts=await app.repo.rollouts.find(state=state),
        state_filter=state or "",
        held=await _held_versions(app),
        start=start or "",
    )


def _numbers(text: str, what: str) -> list[float]:
    """``"1, 10, 50, 100"`` (commas and/or spaces) as numbers; ValidationError naming the bad one."""
    numbers = []
    for part in re.split(r"[,\s]+", text.strip()):
        if part:
            numbers.append(_number(part.removesuffix("%"), what))
    return numbers


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValidationError(f"{what}: {text!r} is not a number") from None


def _whole(text: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValidationError(f"{what}: {text.strip()!r} is not a whole number") from None


def parse_start_form(
    target: str, phases: str, max_failure_percent: str, min_reports: str, phase_seconds: str, tags: str
) -> RolloutCreate:
    """The start form as the API's own body, so the same rules apply to both (ValidationError, 400).

    The failure rate is asked in percent (``5`` is 0.05); an empty phase time means advance by hand.
    """
    parts = target.split("/")
    if len(parts) != 3 or not all(parts):
        raise ValidationError("choose the version to roll out")
    package, branch, version = parts
    try:
        return RolloutCreate(
            package=package,
            branch=branch,
            version=version,
            phases=_numbers(phases, "phases"),
            max_failure_rate=_number(max_failure_percent.strip(), "max failure rate") / 100,
            min_reports=_whole(min_reports, "min reports"),
            phase_seconds=_number(phase_seconds.strip(), "phase seconds") if phase_seconds.strip() else None,
            tags=[tag for tag in re.split(r"[,\s]+", tags.strip()) if tag],
        )
    except PydanticValidationError as exc:
        raise ValidationError(describe_pydantic_error(exc)) from None


@router.post("/rollouts")
async def start(
    request: Request,
    who: OperatorDep,
    target: _Field = "",
    phases: _Field = "1, 10, 50, 100",
    max_failure_percent: _Field = "5",
    min_reports: _Field = "20",
    phase_seconds: _Field = "",
    tags: _Field = "",
    csrf: _Csrf = "",
) -> Response:
    async def operation() -> Done:
        body = parse_start_form(target, phases, max_failure_percent, min_reports, phase_seconds, tags)
        row = await start_rollout(app_state(request), body)
        return Done(f"Started rollout #{row.id} of {row.package} {row.version}.", _page(row.id))

    return await form_action(request, who, csrf, _LIST, operation)


# -- one rollout --------------------------------------------------------------------------------------


def _view(row: RolloutRow) -> dict[str, Any]:
    """What the page and its live part show of the rollout."""
    counts = row.counts
    return {
        "r": row,
        "percent": row.policy.phases[row.phase],
        "phases": len(row.policy.phases),
        "started": counts.succeeded + counts.failed + counts.in_progress,
        "actions": allowed_actions(row),
    }


@router.get("/rollouts/{rollout_id}")
async def rollout_page(request: Request, rollout_id: int, who: OperatorDep) -> Response:
    row = await find_rollout(app_state(request), rollout_id)
    return render(request, "rollout.html", who, section="rollouts", **_view(row))


@router.get("/rollouts/{rollout_id}/live")
async def rollout_live(request: Request, rollout_id: int, who: OperatorDep) -> Response:
    """The page's live part alone, which htmx swaps in every 2 s."""
    row = await find_rollout(app_state(request), rollout_id)
    return render(request, "_rollout_live.html", who, **_view(row))


async def _action(
    request: Request, who: Operator, rollout_id: int, action: OperatorAction, csrf: str
) -> Response:
    async def operation() -> Done:
        row = await act(app_state(request), rollout_id, action)
        return Done(f"{_DONE[action]} rollout #{row.id}: it is {row.state}.")

    return await form_action(request, who, csrf, _page(rollout_id), operation)


@router.post("/rollouts/{rollout_id}/advance")
async def advance(request: Request, rollout_id: int, who: OperatorDep, csrf: _Csrf = "") -> Response:
    return await _action(request, who, rollout_id, "advance", csrf)


@router.post("/rollouts/{rollout_id}/pause")
async def pause(request: Request, rollout_id: int, who: OperatorDep, csrf: _Csrf = "") -> Response:
    return await _action(request, who, rollout_id, "pause", csrf)


@router.post("/rollouts/{rollout_id}/resume")
async def resume(request: Request, rollout_id: int, who: OperatorDep, csrf: _Csrf = "") -> Response:
    return await _action(request, who, rollout_id, "resume", csrf)


@router.post("/rollouts/{rollout_id}/abort")
async def abort(request: Request, rollout_id: int, who: OperatorDep, csrf: _Csrf = "") -> Response:
    return await _action(request, who, rollout_id, "abort", csrf)

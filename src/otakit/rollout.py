"""Staged rollouts: cohort, counting, auto-pause, states, and what a device is offered.

Pure rules only (DESIGN.md, "Fleet: devices, status, staged rollouts"): no I/O, no clock; the caller
passes ``now`` and whatever it loaded from the database. Versions compare as PEP 440 values.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, NamedTuple

from packaging.version import InvalidVersion, Version

from otakit.errors import ConflictError, ValidationError
from otakit.names import check_name
from otakit.versions import parse_version

__all__ = [
    "BUCKETS",
    "DEFAULT_PHASES",
    "MAX_PHASES",
    "OPERATOR_PAUSE",
    "Action",
    "Counts",
    "Device",
    "DeviceState",
    "Outcome",
    "Policy",
    "Position",
    "Report",
    "Rollout",
    "RolloutState",
    "StoredVersion",
    "bucket",
    "classify",
    "count_reports",
    "due_to_advance",
    "in_cohort",
    "initial_position",
    "offer",
    "pause_reason",
    "should_pause",
    "transition",
]

RolloutState = Literal["running", "paused", "completed", "aborted"]
Action = Literal["advance", "pause", "resume", "abort", "release"]
DeviceState = Literal["accepted", "pending"]
Outcome = Literal["succeeded", "failed", "in_progress"]

BUCKETS = 10_000
DEFAULT_PHASES: tuple[float, ...] = (1, 10, 50, 100)
MAX_PHASES = 100
OPERATOR_PAUSE = "operator"  # paused_reason of a pause an operator asked for

_ALLOWED_FROM: dict[Action, tuple[RolloutState, ...]] = {
    "advance": ("running",),
    "pause": ("running",),
    "resume": ("paused",),
    "abort": ("running", "paused"),
    "release": ("running", "paused"),
}
_AFTER: dict[Action, RolloutState] = {"pause": "paused", "resume": "running", "abort": "aborted"}
_OUTCOMES: dict[str, Outcome] = {
    "succeeded": "succeeded",
    "failed": "failed",
    "rolled_back": "failed",
    "queued": "in_progress",
    "running": "in_progress",
}


def bucket(package: str, branch: str, version: str, device: str) -> int:
    """The device's bucket in 0..9999 for this rollout's version (DESIGN's formula, byte for byte)."""
    digest = hashlib.sha256(f"{package}/{branch}/{version}/{device}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def _number(value: object) -> float | None:
    """``value`` if it is a finite int or float (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value


def _threshold(percent: float) -> int:
    # Buckets below this are in. Rounded, so 0.07 % means 7 buckets although 0.07 * 100 is 7.000000000000001.
    return round(percent * 100)


def _check_phases(phases: object) -> tuple[float, ...]:
    if not isinstance(phases, list | tuple) or not phases:
        raise ValidationError("phases must be a non-empty list of percentages ending at 100")
    if len(phases) > MAX_PHASES:
        raise ValidationError(f"a rollout has at most {MAX_PHASES} phases, not {len(phases)}")
    previous = 0.0
    for value in phases:
        p = _number(value)
        if p is None or not 0 < p <= 100:
            raise ValidationError(f"phase {value!r} is not a percentage in (0, 100]")
        if abs(p * 100 - round(p * 100)) > 1e-9:
            raise ValidationError(f"phase {p!r} is finer than the 0.01 % a rollout can tell apart")
        if p <= previous:
            raise ValidationError(f"phases must be strictly increasing: {list(phases)!r}")
        previous = p
    if previous != 100:
        raise ValidationError(f"the last phase must be 100, not {previous!r}")
    return tuple(phases)


@dataclass(frozen=True)
class Policy:
    """A rollout's parameters, valid by construction: a bad one raises ValidationError (a 400).

    ``phases``: strictly increasing percentages in (0, 100], multiples of 0.01, ending at 100, at most
    ``MAX_PHASES``. ``max_failure_rate`` in [0, 1]. ``min_reports``: an integer >= 0 (0: the rate is taken
    over the reports there are). ``phase_seconds``: None (advance by hand) or > 0. ``tags``: names;
    repeats are dropped, order kept.
    """

    phases: tuple[float, ...] = DEFAULT_PHASES
    max_failure_rate: float = 0.05
    min_reports: int = 20
    phase_seconds: float | None = None
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "phases", _check_phases(self.phases))
        rate = _number(self.max_failure_rate)
        if rate is None or not 0 <= rate <= 1:
            raise ValidationError(
                f"max_failure_rate must be a number in [0, 1], not {self.max_failure_rate!r}"
            )
        reports: object = self.min_reports
        if not isinstance(reports, int) or isinstance(reports, bool) or reports < 0:
            raise ValidationError(f"min_reports must be an integer >= 0, not {reports!r}")
        if self.phase_seconds is not None:
            seconds = _number(self.phase_seconds)
            if seconds is None or seconds <= 0:
                raise ValidationError(
                    f"phase_seconds must be null or a number > 0, not {self.phase_seconds!r}"
                )
        tags: object = self.tags
        if not isinstance(tags, list | tuple):
            raise ValidationError("tags must be a list of names")
        checked = [check_name(tag, "tag") for tag in tags]
        object.__setattr__(self, "tags", tuple(dict.fromkeys(checked)))


class Position(NamedTuple):
    state: RolloutState
    phase: int  # an index into Policy.phases


def initial_position(phases: Sequence[float]) -> Position:
    """Where a new rollout starts: ``running`` at phase 0, or ``completed`` when its only phase is 100.

    A ``completed`` start means the caller releases the version at once.
    """
    return Position("completed" if len(phases) == 1 else "running", 0)


def transition(state: RolloutState, action: Action, phase: int, phases: Sequence[float]) -> Position:
    """The position after ``action``; ConflictError (a 409) when ``state`` does not allow it.

    ``advance`` moves one phase on; entering the last phase (100) ends the rollout ``completed``. ``release``
    (the version was released by hand) also ends it ``completed``, at the last phase. Whenever the answer
    is ``completed`` the caller releases the version. ``pause``/``resume``/``abort`` keep the phase. The
    caller stores the answer compare-and-set against ``(state, phase)``, so two servers never apply it twice.
    """
    if not 0 <= phase < len(phases):
        raise ValueError(f"phase {phase} is outside the rollout's {len(phases)} phases")
    allowed = _ALLOWED_FROM[action]
    if state not in allowed:
        if state in ("completed", "aborted"):
            raise ConflictError(f"cannot {action} a rollout that is {state}: it has ended")
        only = " or ".join(allowed)
        raise ConflictError(
            f"cannot {action} a rollout that is {state}: {action} is allowed only from {only}"
        )
    last = len(phases) - 1
    if action == "release":
        return Position("completed", last)
    if action == "advance":
        nxt = min(phase + 1, last)
        return Position("completed" if nxt == last else "running", nxt)
    return Position(_AFTER[action], phase)


def due_to_advance(
    state: RolloutState, phase_started_at: datetime, phase_seconds: float | None, now: datetime
) -> bool:
    """Whether a rollout advances by itself now: it is ``running``, has ``phase_seconds`` and its phase is
    at least that old (the boundary counts).

    ``phase_started_at`` is when the rollout entered its phase or was last resumed, whichever is later (so
    a resume gives the phase its full time again). One call, one phase: the caller stores ``now`` as the
    new phase's start, so a server that was down does not jump several phases at once.
    """
    if state != "running" or phase_seconds is None:
        return False
    return now - phase_started_at >= timedelta(seconds=phase_seconds)


@dataclass(frozen=True)
class Rollout:
    """What the rules need of a stored rollout: where it is and its policy."""

    package: str
    branch: str
    version: str
    policy: Policy = field(default_factory=Policy)
    state: RolloutState = "running"
    phase: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.phase < len(self.policy.phases):
            raise ValueError(f"phase {self.phase} is outside the rollout's {len(self.policy.phases)} phases")

    @classmethod
    def start(cls, package: str, branch: str, version: str, policy: Policy) -> Rollout:
        """A new rollout at its initial position; ValidationError for a bad name or version.

        The caller checks the rest of creation (the version exists, is held and not below the highest
        released one, no other running or paused rollout of the package and branch) and releases the
        version when the answer is already ``completed``.
        """
        check_name(package)
        check_name(branch, "branch")
        parse_version(version)
        state, phase = initial_position(policy.phases)
        return cls(package, branch, version, policy, state, phase)

    @property
    def percent(self) -> float:
        return self.policy.phases[self.phase]


@dataclass(frozen=True)
class Device:
    """A device as seen for one package: ``runs`` is the version of that package its inventory lists.

    ``runs`` must be a valid version (ValidationError otherwise); inventories are checked when stored.
    """

    id: str
    state: DeviceState = "accepted"
    pinned: bool = False
    tags: frozenset[str] = frozenset()
    runs: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", frozenset(self.tags))
        if self.runs is not None:
            parse_version(self.runs)


def in_cohort(rollout: Rollout, device: Device) -> bool:
    """An accepted, unpinned device whose bucket is below the rollout's percent and, when the rollout has
    tags, that has one of them. Whatever the rollout's state: whether to offer is ``offer``'s business."""
    if device.state != "accepted" or device.pinned:
        return False
    if rollout.policy.tags and device.tags.isdisjoint(rollout.policy.tags):
        return False
    return bucket(rollout.package, rollout.branch, rollout.version, device.id) < _threshold(rollout.percent)


@dataclass(frozen=True)
class StoredVersion:
    version: str
    released: bool


def offer(
    device: Device | None,
    rollout: Rollout | None,
    released: str | None,
    stored: Iterable[StoredVersion] | None = None,
) -> str | None:
    """The version ``/latestVersion`` answers, or None for a 404.

    ``device``: None for a request without ``device`` or with an unknown one. ``rollout``: the package and
    branch's running or paused rollout, if any. ``released``: the highest released version, if any.

    ``stored`` is read only for a pinned device whose inventory lists the package, and is then required
    (ValueError without it): the stored versions of the package and branch, in any order. Passing all of
    them is always right; it is enough to pass those not above what the device runs that are released or
    equal to it, e.g. the first row of ``version_key <= key(runs) AND (released OR version_key = key(runs))``
    ordered by ``version_key`` descending. The pinned device is answered the stored version equal to what
    it runs (spelled as stored), else the highest released one below it, else None. A pin wins over
    ``pending``: it only ever holds a device back.

    A device in a running rollout's cohort is answered the rollout's version, unless a higher version
    has been released meanwhile: then the released one, so nobody is offered a downgrade.
    """
    if device is not None and device.pinned and device.runs is not None:
        if stored is None:
            raise ValueError("offer needs the stored versions to answer a pinned device")
        return _pinned_answer(Version(device.runs), stored)
    if (
        device is not None
        and rollout is not None
        and rollout.state == "running"
        and in_cohort(rollout, device)
        and (released is None or parse_version(rollout.version) > parse_version(released))
    ):
        return rollout.version
    return released


def _pinned_answer(runs: Version, stored: Iterable[StoredVersion]) -> str | None:
    best: tuple[Version, str] | None = None
    for entry in stored:
        v = Version(entry.version)
        if v == runs:
            return entry.version
        if entry.released and v < runs and (best is None or v > best[0]):
            best = (v, entry.version)
    return None if best is None else best[1]


def classify(state: str) -> Outcome | None:
    """Which count a report in job ``state`` adds to: ``succeeded``; ``failed`` (also ``rolled_back``);
    ``in_progress`` (``queued``, ``running``). None for any other state: it is not counted."""
    return _OUTCOMES.get(state)


@dataclass(frozen=True)
class Counts:
    succeeded: int = 0
    failed: int = 0
    in_progress: int = 0

    @classmethod
    def of(cls, states: Iterable[str]) -> Counts:
        """Counts of the given report states, one per device (already the latest of each)."""
        tally = {"succeeded": 0, "failed": 0, "in_progress": 0}
        for state in states:
            outcome = classify(state)
            if outcome is not None:
                tally[outcome] += 1
        return cls(**tally)

    @property
    def reported(self) -> int:
        """Finished installs: succeeded + failed."""
        return self.succeeded + self.failed

    @property
    def failure_rate(self) -> float:
        return self.failed / self.reported if self.reported else 0.0


@dataclass(frozen=True)
class Report:
    device: str
    to_version: str | None
    state: str
    at: datetime  # when the server stored it


def _same_version(written: str | None, version: Version) -> bool:
    if written is None:
        return False
    try:
        return Version(written) == version
    except InvalidVersion:
        return False


def count_reports(reports: Iterable[Report], version: str, started: datetime) -> Counts:
    """The rollout's counts from one package's ``reports``, given oldest first (the order they were stored).

    Per device, its latest report made at or after ``started`` among those whose ``to_version`` equals
    ``version`` as a PEP 440 value (``1.0`` is ``1.0.0``); a report with no or an unparsable
    ``to_version`` is not one of them.
    """
    target = parse_version(version)
    latest: dict[str, str] = {}
    for report in reports:
        if report.at >= started and _same_version(report.to_version, target):
            latest[report.device] = report.state
    return Counts.of(latest.values())


def _denominator(counts: Counts, min_reports: int) -> int:
    return max(counts.reported, min_reports)


def should_pause(counts: Counts, max_failure_rate: float, min_reports: int) -> bool:
    """DESIGN's rule: ``failed / max(succeeded + failed, min_reports) > max_failure_rate``; never with no
    reports and ``min_reports`` 0 (0 / 0). The caller applies it to running rollouts only."""
    denominator = _denominator(counts, min_reports)
    # Float division is correctly rounded: a rate exactly equal to max_failure_rate (3 / 60 vs 0.05) is equal.
    return denominator > 0 and counts.failed / denominator > max_failure_rate


def _percents(rate: float, limit: float) -> tuple[str, str]:
    # One decimal, more when needed to show a rate that is above the limit as above it.
    digits = 1
    while rate > limit and digits < 6 and f"{rate * 100:.{digits}f}" == f"{limit * 100:.{digits}f}":
        digits += 1
    return f"{rate * 100:.{digits}f}", f"{limit * 100:.{digits}f}"


def pause_reason(counts: Counts, max_failure_rate: float, min_reports: int) -> str:
    """The ``paused_reason`` of an automatic pause, naming the figures, e.g.
    ``3 of 40 reported installs failed (7.5 % > 5.0 %); paused automatically``."""
    denominator = _denominator(counts, min_reports)
    rate = counts.failed / denominator if denominator else 0.0
    shown, limit = _percents(rate, max_failure_rate)
    sign = ">" if rate > max_failure_rate else "<="
    noun = "install" if counts.reported == 1 else "installs"
    if denominator == counts.reported:
        figures = f"{shown} % {sign} {limit} %"
    else:
        figures = f"{counts.failed} of the minimum {min_reports} = {shown} % {sign} {limit} %"
    return f"{counts.failed} of {counts.reported} reported {noun} failed ({figures}); paused automatically"

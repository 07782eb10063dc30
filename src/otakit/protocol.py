"""The fleet's wire protocol: paths, bodies and answers shared by the server, the daemon and the CLI.

Bodies are pydantic models that refuse unknown keys and bound every size, so that a device (or anyone
holding its token) can write nothing the server did not expect. Answers are the models the routes
declare (so ``/docs`` shows what they send) and that clients read them with; they ignore keys a later
server may add.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from otakit.api_paths import DEVICES, ROLLOUTS, VERSIONS, device_path
from otakit.errors import ValidationError
from otakit.names import check_name
from otakit.versions import MAX_VERSION_LENGTH, parse_version

__all__ = [
    "DEVICES",
    "MAX_REPORT_BYTES",
    "ROLLOUTS",
    "VERSIONS",
    "Counts",
    "DeviceAnswer",
    "DeviceInfo",
    "DeviceList",
    "DeviceUpdate",
    "Done",
    "Heartbeat",
    "HeartbeatAnswer",
    "JobReport",
    "Name",
    "PackageRef",
    "Register",
    "RegisterAnswer",
    "RolloutAnswer",
    "RolloutCreate",
    "RolloutInfo",
    "RolloutList",
    "device_path",
]

MAX_REPORT_BYTES = 1024 * 1024  # a report (a job with up to 2,000 log lines) or any other fleet body


def _name(value: str) -> str:
    try:
        return check_name(value, "name")
    except ValidationError as exc:
        raise ValueError(str(exc)) from None


def _version(value: str) -> str:
    try:
        parse_version(value)
    except ValidationError as exc:
        raise ValueError(str(exc)) from None
    return value


Name = Annotated[str, AfterValidator(_name)]
Version = Annotated[str, Field(max_length=MAX_VERSION_LENGTH), AfterValidator(_version)]
_Text = Annotated[str, Field(max_length=1000)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PackageRef(_Body):
    """One installed package, as a device reports it."""

    package: Name
    branch: Name
    version: Version


class DeviceUpdate(_Body):
    """What a device may say about itself; a field left out (None) stays as it was."""

    description: _Text | None = None
    tags: Annotated[list[Name], Field(max_length=100)] | None = None
    attributes: Annotated[dict[Name, _Text], Field(max_length=100)] | None = None
    packages: Annotated[list[PackageRef], Field(max_length=1000)] | None = None


class Register(DeviceUpdate):
    """``POST /api/v1/devices/register`` with an enrollment token."""

    device: Name


class Heartbeat(DeviceUpdate):
    """``POST /api/v1/devices/{id}/heartbeat``: an empty body only marks the device seen."""


JobState = Literal["queued", "running", "succeeded", "failed", "rolled_back"]
JobAction = Literal["install", "update", "rollback", "remove", "check"]


class JobReport(BaseModel):
    """``POST /api/v1/devices/{id}/reports``: one job as the daemon's ``GET /jobs/{id}`` gives it.

    Keys a later daemon may add are ignored rather than refused, so old servers take new reports.
    """

    model_config = ConfigDict(extra="ignore")

    id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
    package: Name | None = None
    action: JobAction
    state: JobState
    step: Annotated[str, Field(max_length=32)] = ""
    from_version: Version | None = None
    to_version: Version | None = None
    progress: Annotated[int, Field(ge=0, le=100)] = 0
    error: Annotated[str, Field(max_length=4000)] | None = None
    log: Annotated[list[Annotated[str, Field(max_length=4000)]], Field(max_length=2001)] = []


class RolloutCreate(_Body):
    """``POST /api/v1/rollouts`` (the numbers are checked by ``otakit.rollout.Policy``)."""

    package: Name
    branch: Name
    version: Version
    phases: Annotated[list[float], Field(min_length=1, max_length=100)] = [1, 10, 50, 100]
    max_failure_rate: float = 0.05
    min_reports: int = 20
    phase_seconds: float | None = None
    tags: Annotated[list[Name], Field(max_length=100)] = []


# -- answers -----------------------------------------------------------------------------------------


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    status: int


class Done(_Answer):
    """``{"status": 200}``."""


class DeviceInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    description: str
    tags: list[str]
    attributes: dict[str, str]
    packages: list[PackageRef]
    state: Literal["accepted", "pending"]
    pinned: bool
    online: bool
    last_seen: str | None = Field(description="ISO-8601 UTC")
    registered: str = Field(description="ISO-8601 UTC")
    jobs: dict[str, dict[str, object]] = Field(description="per package, its latest report")
    reports: list[dict[str, object]] | None = Field(
        None, description="GET /api/v1/devices/{id} only: the last 50 reports, newest first"
    )


class RegisterAnswer(_Answer):
    device: DeviceInfo
    token: str = Field(description="the device's own token: shown once, kept by the server as its sha256")
    heartbeat_seconds: int


class HeartbeatAnswer(_Answer):
    heartbeat_seconds: int


class DeviceAnswer(_Answer):
    device: DeviceInfo


class DeviceList(_Answer):
    list: list[DeviceInfo]
    next: str | None = Field(description="the next page's `after`, or null on the last page")
    total: int


class Counts(BaseModel):
    succeeded: int
    failed: int
    in_progress: int


class RolloutInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: int
    package: str
    branch: str
    version: str
    phases: list[float]
    phase: int
    percent: float
    state: Literal["running", "paused", "completed", "aborted"]
    paused_reason: str | None
    max_failure_rate: float
    min_reports: int
    phase_seconds: float | None
    tags: list[str]
    created: str
    updated: str
    counts: Counts
    failure_rate: float


class RolloutAnswer(_Answer):
    rollout: RolloutInfo


class RolloutList(_Answer):
    list: list[RolloutInfo]

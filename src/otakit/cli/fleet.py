"""The operator's commands (admin token): ``devices``, ``device …``, ``rollout …``, ``release``,
``hold`` and ``delete``.

Each is one call (or, for ``devices``, one per page) to the server's admin API. With ``--json`` a
command prints the server's own object or list on stdout for scripts; otherwise a Rich table. Text
that devices supply (ids aside: descriptions, tags, attributes, job errors) is shown as plain text,
never read as Rich markup, with control characters replaced.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import typer
from typer.core import TyperGroup

from otakit.cli.errors import reporting_errors
from otakit.errors import AuthError, ValidationError

if TYPE_CHECKING:  # Rich and httpx load when a command runs, not when the CLI starts
    from rich.table import Table
    from rich.text import Text

    from otakit.client import ServerClient

__all__ = ["device_app", "register", "rollout_app"]

from otakit.api_paths import DEVICES as _DEVICES
from otakit.api_paths import ROLLOUTS as _ROLLOUTS
from otakit.api_paths import VERSIONS as _VERSIONS

_PAGE = 1000  # the server's largest page
_SHOWN_REPORTS = 10

ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server", "-s", help="the otakit server's URL", envvar="OTAKIT_SERVER",
        show_default=False,
    ),
]  # fmt: skip
TokenOption = Annotated[
    str | None,
    typer.Option("--token", help="admin token", envvar="OTAKIT_ADMIN_TOKEN", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print the server's JSON on stdout")]
DeviceArgument = Annotated[str, typer.Argument(metavar="ID", help="the device's id", show_default=False)]
RolloutArgument = Annotated[int, typer.Argument(metavar="ID", help="the rollout's id", show_default=False)]
PackageArgument = Annotated[str, typer.Argument(metavar="PACKAGE", help="package name", show_default=False)]
BranchArgument = Annotated[str, typer.Argument(metavar="BRANCH", help="branch", show_default=False)]
VersionArgument = Annotated[
    str, typer.Argument(metavar="VERSION", help="version (PEP 440: 1.1 is 1.1.0)", show_default=False)
]


class DeviceState(StrEnum):
    pending = "pending"
    accepted = "accepted"


class RolloutState(StrEnum):
    running = "running"
    paused = "paused"
    completed = "completed"
    aborted = "aborted"


# -- the edge: options, the client, output ------------------------------------------------------------


@contextmanager
def _admin(server: str | None, token: str | None) -> Iterator[ServerClient]:
    """A client with the admin token; every OtakitError inside becomes one line and exit status 1."""
    with reporting_errors():
        if not server:
            raise ValidationError("no server given: pass --server or set OTAKIT_SERVER")
        if not token:
            raise AuthError("an admin token is required: pass --token or set OTAKIT_ADMIN_TOKEN")
        from otakit.client import ServerClient

        with ServerClient(server, token=token) as client:
            yield client


def _path(*parts: str) -> str:
    return "/".join(quote(part, safe="") for part in parts)


def _version_path(package: str, branch: str, version: str, *action: str) -> str:
    from otakit.names import check_name
    from otakit.versions import parse_version

    check_name(package, "package")
    check_name(branch, "branch")
    parse_version(version)
    return _VERSIONS + "/" + _path(package, branch, version, *action)


def _device_path(device_id: str, *action: str) -> str:
    from otakit.names import check_name

    return _DEVICES + "/" + _path(check_name(device_id, "device"), *action)


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def _print(*renderables: Any) -> None:
    from rich.console import Console

    console = Console()
    for renderable in renderables:
        console.print(renderable)


def _clean(value: object) -> str:
    """A value as one line of text: what a terminal would act on (escape sequences) is replaced."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return "".join(char if char.isprintable() else "\ufffd" for char in text)


def _text(value: object, style: str = "") -> Text:
    from rich.text import Text

    return Text("" if value is None else _clean(value), style=style)


def _lines(values: Iterable[object], style: str = "") -> Text:
    from rich.text import Text

    return Text("\n".join(_clean(value) for value in values), style=style)


def _when(stamp: str | float | None) -> str:
    if stamp is None:
        return "never"
    at = datetime.fromtimestamp(stamp, UTC) if isinstance(stamp, int | float) else _parse_time(stamp)
    if at is None:
        return _clean(stamp)
    return at.strftime("%Y-%m-%d %H:%M:%SZ")


def _parse_time(stamp: str) -> datetime | None:
    try:
        return datetime.fromisoformat(stamp)
    except ValueError:
        return None


def _ago(stamp: str | None) -> str:
    at = _parse_time(stamp) if stamp else None
    if at is None:
        return "never" if stamp is None else _clean(stamp)
    seconds = int((datetime.now(UTC) - at).total_seconds())
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago" if seconds > 0 else "just now"


def _table(*headers: str, fixed: Iterable[str] = (), **options: Any) -> Table:
    """A table whose ``fixed`` columns never wrap (ids, states, times): the others give way."""
    from rich.table import Table

    table = Table(**options)
    keep = set(fixed)
    for header in headers:
        table.add_column(header, no_wrap=header in keep)
    return table


def _kv_table(title: str | None = None) -> Table:
    from rich.table import Table

    table = Table(show_header=False, box=None, title=title, title_justify="left", title_style="bold")
    table.add_column(style="bold")
    table.add_column()
    return table


# -- devices ------------------------------------------------------------------------------------------

_STATE_STYLE = {"accepted": "green", "pending": "yellow"}


def _online(device: dict[str, Any]) -> Text:
    return _text("● online", "green") if device.get("online") else _text("○ offline", "dim")


def _packages(device: dict[str, Any]) -> Text:
    return _lines(f"{p.get('package')} {p.get('version')} ({p.get('branch')})" for p in device["packages"])


def _devices_table(listed: list[dict[str, Any]], total: int) -> Table:
    shown = f"{len(listed)} of {total} devices" if len(listed) < total else f"{total} device(s)"
    table = _table(
        "id", "state", "online", "last seen", "pinned", "packages", "tags",
        fixed=("id", "state", "online", "last seen", "pinned", "packages"), caption=shown,
    )  # fmt: skip
    for device in listed:
        table.add_row(
            _text(device["id"], "bold"),
            _text(device["state"], _STATE_STYLE.get(device["state"], "")),
            _online(device),
            _text(_ago(device.get("last_seen"))),
            _text("pinned" if device.get("pinned") else "", "yellow"),
            _packages(device),
            _text(", ".join(_clean(tag) for tag in device.get("tags", []))),
        )
    return table


def _fetch_devices(
    client: ServerClient, filters: dict[str, str], limit: int | None
) -> tuple[list[dict[str, Any]], int]:
    """Every matching device, following ``next`` page by page (or the first ``limit``), and the total."""
    listed: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        size = _PAGE if limit is None else min(_PAGE, limit - len(listed))
        params = {**filters, "limit": str(size), **({"after": after} if after else {})}
        page = client.call("GET", _DEVICES, params=params)
        listed.extend(page["list"])
        after = page.get("next")
        if after is None or (limit is not None and len(listed) >= limit):
            return listed, int(page.get("total", len(listed)))


def devices(
    server: ServerOption = None,
    token: TokenOption = None,
    tag: Annotated[str | None, typer.Option(help="only devices with this tag", show_default=False)] = None,
    package: Annotated[
        str | None,
        typer.Option("--package", "-p", help="only devices that run this package", show_default=False),
    ] = None,
    branch: Annotated[
        str | None, typer.Option("--branch", "-b", help="only devices on this branch", show_default=False)
    ] = None,
    version: Annotated[
        str | None,
        typer.Option(
            "--version", "-V", help="only devices running this version (PEP 440)", show_default=False
        ),
    ] = None,
    online: Annotated[
        bool | None,
        typer.Option("--online/--offline", help="only online (or offline) devices", show_default=False),
    ] = None,
    state: Annotated[DeviceState | None, typer.Option(help="only pending or accepted devices")] = None,
    limit: Annotated[
        int | None,
        typer.Option(min=1, help="at most this many (default: all, page by page)", show_default=False),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List the fleet's devices, sorted by id (--json: a JSON list of device objects)."""
    filters = {
        key: value
        for key, value in {"tag": tag, "package": package, "branch": branch, "version": version}.items()
        if value is not None
    }
    if online is not None:
        filters["online"] = "true" if online else "false"
    if state is not None:
        filters["state"] = state.value
    with _admin(server, token) as client:
        listed, total = _fetch_devices(client, filters, limit)
    if as_json:
        _print_json(listed)
    elif not listed:
        typer.echo("no devices")
    else:
        _print(_devices_table(listed, total))


class _DeviceGroup(TyperGroup):
    """``otakit device ID …`` is ``otakit device show ID …``: a first word that names no subcommand is
    a device's id."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # Any: typer's vendored click
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["show", *args]
        return super().parse_args(ctx, args)


device_app = typer.Typer(
    cls=_DeviceGroup,
    no_args_is_help=True,
    help=(
        "Show one device (otakit device ID, short for otakit device show ID) or accept, pin, unpin or"
        " delete it. A device whose id is a subcommand's name is shown with otakit device show ID"
        " (say, otakit device show accept)."
    ),
)


def _report_time(report: dict[str, Any]) -> str:
    received = report.get("received")
    if not isinstance(received, int | float):
        return ""
    return _ago(datetime.fromtimestamp(received, UTC).isoformat())


def _versions(job: dict[str, Any]) -> str:
    before, after = job.get("from_version"), job.get("to_version")
    if before and after:
        return f"{before} → {after}"
    return str(after or before or "")


def _error_line(job: dict[str, Any]) -> Text:
    error = job.get("error")
    return _text(str(error).splitlines()[0] if error else "", "red")


_JOB_STYLE = {"succeeded": "green", "failed": "red", "rolled_back": "red", "running": "cyan"}


def _job_row(job: dict[str, Any]) -> list[Text]:
    job_state = str(job.get("state", ""))
    return [
        _text(job.get("action")),
        _text(job_state, _JOB_STYLE.get(job_state, "")),
        _text(job.get("step")),
        _text(_versions(job)),
        _text(f"{job.get('progress', 0)} %"),
        _error_line(job),
    ]


def _device_tables(device: dict[str, Any]) -> list[Table]:

    summary = _kv_table()
    summary.add_row("id", _text(device["id"]))
    summary.add_row("description", _text(device.get("description")))
    summary.add_row("state", _text(device["state"], _STATE_STYLE.get(device["state"], "")))
    summary.add_row("online", _online(device))
    summary.add_row("last seen", _text(f"{_when(device.get('last_seen'))} ({_ago(device.get('last_seen'))})"))
    summary.add_row("registered", _text(_when(device.get("registered"))))
    summary.add_row(
        "pinned", _text("yes: offered nothing above what it runs" if device.get("pinned") else "no")
    )
    summary.add_row("tags", _text(", ".join(_clean(tag) for tag in device.get("tags", []))))
    attributes = device.get("attributes", {})
    summary.add_row("attributes", _lines(f"{key}={value}" for key, value in sorted(attributes.items())))
    summary.add_row("packages", _packages(device))
    tables = [summary]

    jobs = device.get("jobs", {})
    if jobs:
        latest = _table(
            "package", "action", "state", "step", "versions", "progress", "error",
            fixed=("state", "versions", "progress"), title="latest job per package", title_justify="left",
        )  # fmt: skip
        for package_name, job in sorted(jobs.items()):
            latest.add_row(_text(package_name), *_job_row(job))
        tables.append(latest)

    reports = device.get("reports", [])
    if reports:
        shown = reports[:_SHOWN_REPORTS]
        caption = (
            f"the last {len(shown)} of {len(reports)}; --json shows all"
            if len(reports) > len(shown)
            else None
        )
        recent = _table(
            "received", "package", "job", "action", "state", "step", "versions", "progress", "error",
            fixed=("received", "state", "versions", "progress"), caption=caption,
            title="last reports, newest first", title_justify="left",
        )  # fmt: skip
        for report in shown:
            recent.add_row(
                _text(_report_time(report)),
                _text(report.get("package")),
                _text(report.get("id")),
                *_job_row(report),
            )
        tables.append(recent)
    return tables


@device_app.command()
def show(
    device_id: DeviceArgument,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a device: its fields, the latest job per package, its last reports."""
    with _admin(server, token) as client:
        device = client.call("GET", _device_path(device_id))["device"]
    if as_json:
        _print_json(device)
        return
    _print(*_device_tables(device))


def _device_action(device_id: str, server: str | None, token: str | None, method: str, *action: str) -> None:
    with _admin(server, token) as client:
        client.call(method, _device_path(device_id, *action))


@device_app.command()
def accept(device_id: DeviceArgument, server: ServerOption = None, token: TokenOption = None) -> None:
    """Accept a pending device (OTAKIT_DEVICE_APPROVAL=manual): rollouts may then include it."""
    _device_action(device_id, server, token, "POST", "accept")
    typer.echo(f"accepted device {device_id}")


@device_app.command()
def pin(device_id: DeviceArgument, server: ServerOption = None, token: TokenOption = None) -> None:
    """Pin a device: it is offered nothing above what it runs."""
    _device_action(device_id, server, token, "POST", "pin")
    typer.echo(f"pinned device {device_id}: it is offered nothing above what it runs")


@device_app.command()
def unpin(device_id: DeviceArgument, server: ServerOption = None, token: TokenOption = None) -> None:
    """Unpin a device: it is offered updates again."""
    _device_action(device_id, server, token, "POST", "unpin")
    typer.echo(f"unpinned device {device_id}: it is offered updates again")


@device_app.command()
def delete(device_id: DeviceArgument, server: ServerOption = None, token: TokenOption = None) -> None:
    """Forget a device: its record, reports and token (the id may enroll again)."""
    _device_action(device_id, server, token, "DELETE")
    typer.echo(f"deleted device {device_id}: its record, reports and token are gone")


# -- rollouts -----------------------------------------------------------------------------------------

rollout_app = typer.Typer(
    no_args_is_help=True,
    help="Staged rollouts of held versions: start one, list, show, advance, pause, resume or abort it.",
)

_ROLLOUT_STYLE = {"running": "green", "paused": "yellow", "completed": "cyan", "aborted": "red"}


def _percent(rollout: dict[str, Any], *, short: bool = False) -> str:
    phase = f"{rollout['phase'] + 1}/{len(rollout.get('phases', []))}"
    return f"{rollout['percent']:g} % ({phase if short else 'phase ' + phase})"


def _counts(rollout: dict[str, Any]) -> str:
    counts = rollout.get("counts", {})
    succeeded, failed = counts.get("succeeded", 0), counts.get("failed", 0)
    return f"{succeeded} ok, {failed} failed, {counts.get('in_progress', 0)} in progress"


def _rate(value: object) -> str:
    return f"{float(value) * 100:.1f} %" if isinstance(value, int | float) else ""


def _state_text(rollout: dict[str, Any]) -> Text:
    return _text(rollout["state"], _ROLLOUT_STYLE.get(rollout["state"], ""))


def _rollouts_table(listed: list[dict[str, Any]]) -> Table:
    table = _table(
        "id", "package", "branch", "version", "state", "percent", "ok / failed / running", "failure rate",
        "paused reason", fixed=("id", "state", "percent"), caption=f"{len(listed)} rollout(s)",
    )  # fmt: skip
    for rollout in listed:
        counts = rollout.get("counts", {})
        table.add_row(
            _text(rollout["id"], "bold"),
            _text(rollout["package"]),
            _text(rollout["branch"]),
            _text(rollout["version"]),
            _state_text(rollout),
            _text(_percent(rollout, short=True)),
            _text(" / ".join(str(counts.get(key, 0)) for key in ("succeeded", "failed", "in_progress"))),
            _text(_rate(rollout.get("failure_rate"))),
            _text(rollout.get("paused_reason")),
        )
    return table


def _rollout_table(rollout: dict[str, Any]) -> Table:
    table = _kv_table(f"rollout {rollout['id']}")
    table.add_row("package", _text(rollout["package"]))
    table.add_row("branch", _text(rollout["branch"]))
    table.add_row("version", _text(rollout["version"]))
    table.add_row("state", _state_text(rollout))
    if rollout.get("paused_reason"):
        table.add_row("paused reason", _text(rollout["paused_reason"], "yellow"))
    table.add_row("percent", _text(_percent(rollout)))
    table.add_row("phases", _text(", ".join(f"{phase:g}" for phase in rollout.get("phases", []))))
    table.add_row("counts", _text(_counts(rollout)))
    table.add_row(
        "failure rate",
        _text(
            f"{_rate(rollout.get('failure_rate'))} (pauses above {_rate(rollout.get('max_failure_rate'))})"
        ),
    )
    table.add_row("min reports", _text(rollout.get("min_reports")))
    seconds = rollout.get("phase_seconds")
    table.add_row("phase seconds", _text(f"{seconds:g}" if seconds is not None else "none (advance by hand)"))
    table.add_row("tags", _text(", ".join(_clean(tag) for tag in rollout.get("tags", [])) or "any"))
    table.add_row("created", _text(_when(rollout.get("created"))))
    table.add_row("updated", _text(_when(rollout.get("updated"))))
    return table


def _show_rollout(rollout: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(rollout)
    else:
        _print(_rollout_table(rollout))


def _phases(text: str) -> list[float | int]:
    phases: list[float | int] = []
    for part in text.split(","):
        try:
            value = float(part.strip())
        except ValueError:
            raise ValidationError(
                f"--phases: {part.strip()!r} is not a number; give percentages such as 1,10,50,100"
            ) from None
        phases.append(int(value) if value.is_integer() else value)
    return phases


@rollout_app.command()
def start(
    package: PackageArgument,
    branch: BranchArgument,
    version: VersionArgument,
    phases: Annotated[
        str | None,
        typer.Option(
            help="percentages of the fleet, increasing, ending at 100 (default 1,10,50,100)",
            show_default=False,
        ),
    ] = None,
    max_failure_rate: Annotated[
        float | None,
        typer.Option(
            help="pause by itself above this share of failed installs (default 0.05)", show_default=False
        ),
    ] = None,
    min_reports: Annotated[
        int | None,
        typer.Option(help="the failure rate's smallest denominator (default 20)", show_default=False),
    ] = None,
    phase_seconds: Annotated[
        float | None,
        typer.Option(
            help="advance by itself after this long per phase (default: by hand)", show_default=False
        ),
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", help="only devices with one of these tags (repeatable)", show_default=False),
    ] = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start a staged rollout of a held version (the server's defaults for what is not given)."""
    with _admin(server, token) as client:
        body: dict[str, Any] = {"package": package, "branch": branch, "version": version}
        if phases is not None:
            body["phases"] = _phases(phases)
        if max_failure_rate is not None:
            body["max_failure_rate"] = max_failure_rate
        if min_reports is not None:
            body["min_reports"] = min_reports
        if phase_seconds is not None:
            body["phase_seconds"] = phase_seconds
        if tag:
            body["tags"] = tag
        rollout = client.call("POST", _ROLLOUTS, json=body)["rollout"]
    _show_rollout(rollout, as_json)


@rollout_app.command("list")
def list_rollouts(
    package: Annotated[
        str | None, typer.Option("--package", "-p", help="only this package", show_default=False)
    ] = None,
    branch: Annotated[
        str | None, typer.Option("--branch", "-b", help="only this branch", show_default=False)
    ] = None,
    state: Annotated[
        RolloutState | None, typer.Option(help="only rollouts in this state", show_default=False)
    ] = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """List rollouts, newest first (--json: a JSON list of rollout objects)."""
    params = {
        key: value for key, value in {"package": package, "branch": branch}.items() if value is not None
    }
    if state is not None:
        params["state"] = state.value
    with _admin(server, token) as client:
        listed: list[dict[str, Any]] = client.call("GET", _ROLLOUTS, params=params)["list"]
    if as_json:
        _print_json(listed)
    elif not listed:
        typer.echo("no rollouts")
    else:
        _print(_rollouts_table(listed))


@rollout_app.command("show")
def show_rollout(
    rollout_id: RolloutArgument,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a rollout: its state, phase, counts and failure rate."""
    with _admin(server, token) as client:
        rollout = client.call("GET", f"{_ROLLOUTS}/{rollout_id}")["rollout"]
    _show_rollout(rollout, as_json)


def _rollout_action(
    rollout_id: int, action: str, server: str | None, token: str | None, as_json: bool
) -> None:
    with _admin(server, token) as client:
        rollout = client.call("POST", f"{_ROLLOUTS}/{rollout_id}/{action}")["rollout"]
    _show_rollout(rollout, as_json)


def _rollout_action_command(action: str, doc: str) -> None:
    def command(
        rollout_id: RolloutArgument,
        server: ServerOption = None,
        token: TokenOption = None,
        as_json: JsonOption = False,
    ) -> None:
        _rollout_action(rollout_id, action, server, token, as_json)

    command.__doc__ = doc
    rollout_app.command(name=action)(command)


for _action, _doc in (
    (
        "advance",
        "Move a running rollout to its next phase (entering 100 % completes it and releases the version).",
    ),
    ("pause", "Pause a running rollout: nobody new is offered the version."),
    ("resume", "Resume a paused rollout (its phase gets its full --phase-seconds again)."),
    ("abort", "End a running or paused rollout; the version stays held."),
):
    _rollout_action_command(_action, _doc)


# -- versions -----------------------------------------------------------------------------------------


def release(
    package: PackageArgument,
    branch: BranchArgument,
    version: VersionArgument,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Offer a stored version to every device now (a rollout of it ends completed)."""
    with _admin(server, token) as client:
        client.call("POST", _version_path(package, branch, version, "release"))
    typer.echo(f"released {package} {version} on branch {branch}: every device is offered it")


def hold(
    package: PackageArgument,
    branch: BranchArgument,
    version: VersionArgument,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Stop offering a version (devices that have it keep it; 409 while a rollout of it runs or is paused)."""
    with _admin(server, token) as client:
        client.call("POST", _version_path(package, branch, version, "hold"))
    typer.echo(f"held {package} {version} on branch {branch}: no device is offered it")


def delete_version(
    package: PackageArgument,
    branch: BranchArgument,
    version: VersionArgument,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Delete a version, its row and its file (409 while a rollout of it runs or is paused)."""
    with _admin(server, token) as client:
        client.call("DELETE", _version_path(package, branch, version))
    typer.echo(f"deleted {package} {version} on branch {branch}")


def register(app: typer.Typer) -> None:
    app.command()(devices)
    app.add_typer(device_app, name="device")
    app.add_typer(rollout_app, name="rollout")
    app.command()(release)
    app.command()(hold)
    app.command("delete")(delete_version)

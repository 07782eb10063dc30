"""The publisher's commands: ``pack``, ``upload``, ``latest``, ``versions``."""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from otakit.cli.errors import reporting_errors
from otakit.errors import AuthError, ConflictError, NotFoundError, ValidationError

if TYPE_CHECKING:
    from otakit.client import ServerClient
    from otakit.content import Content
    from otakit.filedigest import FileDigest

# The commands import what they use when they run: `otakit upload` starts without loading the
# packer, the signing library or Rich's tables (a CLI's start-up is paid on every call).

__all__ = ["register"]


class Bump(StrEnum):
    patch = "patch"
    minor = "minor"
    major = "major"


ServerOption = Annotated[
    str, typer.Option("--server", "-s", help="the otakit server's URL", envvar="OTAKIT_SERVER")
]
JsonOption = Annotated[bool, typer.Option("--json", help="print the server's answer as JSON")]


def pack(
    folder: Annotated[Path, typer.Argument(help="the folder to pack", show_default=False)],
    package: Annotated[str, typer.Option("--package", "-p", help="package name")],
    branch: Annotated[str, typer.Option("--branch", "-b", help="branch (channel), e.g. major or beta")],
    version: Annotated[
        str | None, typer.Option("--version", "-V", help="version (PEP 440, e.g. 1.2.3)")
    ] = None,
    bump: Annotated[
        Bump | None, typer.Option(help="instead of --version: the server's latest on --remote, bumped")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the zip and content.json")] = Path("."),
    remote: Annotated[str, typer.Option(help="base URL of the OTA server devices use for this package")] = "",
    local: Annotated[
        str | None,
        typer.Option(help="install folder on the device (default ./<package>)", show_default=False),
    ] = None,
    before: Annotated[str, typer.Option(help="shell command the device runs before installing")] = "",
    after: Annotated[str, typer.Option(help="shell command the device runs after installing")] = "",
    depends: Annotated[
        list[str] | None, typer.Option(help="NAME=SPEC, e.g. base=>=1.2,<2 (repeatable)", show_default=False)
    ] = None,
    description: Annotated[str, typer.Option(help="what the package is")] = "",
    update_info: Annotated[str, typer.Option("--update-info", help="release notes")] = "",
    exclude: Annotated[
        list[str] | None,
        typer.Option(help="gitignore-style pattern to leave out (repeatable)", show_default=False),
    ] = None,
    sign: Annotated[Path | None, typer.Option(help="sign content.json with this publisher key")] = None,
) -> None:
    """Pack FOLDER into OUT/<package>-<branch>-<version>.zip and OUT/content.json (reproducibly)."""
    from otakit.pack import pack as pack_folder
    from otakit.pack import parse_depends
    from otakit.signing import load_private_key

    with reporting_errors():
        signing_key = load_private_key(sign.read_bytes()) if sign is not None else None
        if (version is None) == (bump is None):
            raise ValidationError("give exactly one of --version and --bump")
        if version is None:
            assert bump is not None
            version = _bumped(remote, package, branch, bump)
        result = pack_folder(
            folder,
            out,
            package=package,
            branch=branch,
            version=version,
            description=description,
            update_info=update_info,
            local=local,
            remote=remote,
            before=before,
            after=after,
            depends=parse_depends(depends or []),
            excludes=exclude or [],
            signing_key=signing_key,
        )
    typer.echo(f"packed {result.files} file(s), {result.size} bytes: {result.zip_path}")
    typer.echo(f"sha256 {result.content.sha256}: {result.content_path}")
    if result.content.signature is not None:
        typer.echo(f"signed with key {result.content.signature.keyid}")


def _bumped(remote: str, package: str, branch: str, part: Bump) -> str:
    from packaging.version import Version

    from otakit.client import ServerClient
    from otakit.versions import bump as bump_version

    if not remote:
        raise ValidationError("--bump needs --remote, the server to ask for the latest version")
    with ServerClient(remote) as client:
        try:
            current: Version | None = client.latest(package, branch).parsed_version
        except NotFoundError:
            current = None  # a first version needs no server history
    return bump_version(current, part.value)


def upload(
    zip_file: Annotated[Path, typer.Argument(metavar="ZIP", help="the package zip", show_default=False)],
    content: Annotated[Path, typer.Option("--content", "-c", help="its content.json", show_default=False)],
    server: ServerOption,
    token: Annotated[
        str | None,
        typer.Option(help="publisher token (or OTAKIT_TOKEN)", envvar="OTAKIT_TOKEN", show_default=False),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="replace the version if the server has it")] = False,
) -> None:
    """Upload ZIP with its content.json, streamed, with a progress bar on a terminal.

    ZIP's sha256 is checked against content.json while the upload starts; a file that does not match
    is stopped before its last piece, so it is never published."""
    from otakit.filedigest import FileDigest

    with reporting_errors():
        if not zip_file.is_file():
            raise ValidationError(f"{zip_file} is not a file")
        digest = FileDigest(zip_file)  # hashing starts while httpx and the models load
        try:
            said = _publish(zip_file, content, server, token, force=force, digest=digest)
        finally:
            digest.cancel()
    typer.echo(said)


def _publish(
    zip_file: Path, content: Path, server: str, token: str | None, *, force: bool, digest: FileDigest
) -> str:
    from otakit.client import ServerClient
    from otakit.content import parse_content

    text = content.read_text("utf-8")
    described = parse_content(text, str(content))
    size = zip_file.stat().st_size
    with ServerClient(server, token=token) as client:
        try:
            _send(client, zip_file, text, size, force=force, digest=digest)
        except AuthError as exc:
            # The server's advice is for curl (the Authorization header); ours names our own ways.
            if not token and str(exc).startswith("a publisher token is required"):
                raise AuthError("a publisher token is required: pass --token or set OTAKIT_TOKEN") from None
            raise
        except ConflictError as exc:
            if not _already_there(client, described):
                reason = f"{exc}".split("; upload with")[0]
                raise ConflictError(f"{reason}; use --force to replace it") from None
            return f"{described.package} {described.version} is already on the server, identical"
    return f"published {described.package} {described.version} on branch {described.branch} to {server}"


def _send(
    client: ServerClient, zip_file: Path, text: str, size: int, *, force: bool, digest: FileDigest
) -> None:
    if not sys.stderr.isatty():
        typer.echo(f"uploading {zip_file.name} ({size} bytes) to {client.base_url}", err=True)
        client.upload(zip_file, text, force=force, digest=digest)
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    console = Console(stderr=True)

    columns = (
        "{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(zip_file.name, total=size)
        client.upload(
            zip_file,
            text,
            force=force,
            digest=digest,
            progress=lambda sent: progress.update(task, completed=sent),
        )


def _already_there(client: ServerClient, described: Content) -> bool:
    """After a 409: is the same file there (say, an earlier try whose answer was lost)?"""
    try:
        listed = client.versions(described.package, described.branch, described.version)
    except NotFoundError:
        return False
    return any(described.sha256_matches(str(entry["content"].get("sha256", ""))) for entry in listed)


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def latest(
    server: ServerOption,
    package: Annotated[str, typer.Option("--package", "-p", help="package name")],
    branch: Annotated[str, typer.Option("--branch", "-b", help="branch")],
    as_json: JsonOption = False,
) -> None:
    """Show the highest version of a package on a branch."""
    from rich.console import Console
    from rich.table import Table

    from otakit.client import ServerClient

    with reporting_errors(), ServerClient(server) as client:
        found = client.latest(package, branch)
    if as_json:
        _print_json(found.raw)
        return
    table = Table(show_header=False, box=None)
    for key, value in found.raw.items():
        table.add_row(key, json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value)
    Console().print(table)


def versions(
    server: ServerOption,
    package: Annotated[str, typer.Option("--package", "-p", help="package name")],
    branch: Annotated[str | None, typer.Option("--branch", "-b", help="only this branch")] = None,
    as_json: JsonOption = False,
) -> None:
    """List a package's versions, highest first."""
    from rich.console import Console
    from rich.table import Table

    from otakit.client import ServerClient

    with reporting_errors(), ServerClient(server) as client:
        listed = client.versions(package, branch)
    if as_json:
        _print_json(listed)
        return
    table = Table("version", "branch", "sha256", "description")
    for entry in listed:
        body = entry["content"]
        table.add_row(
            entry["version"],
            entry["branch"],
            str(body.get("sha256", ""))[:12],
            str(body.get("description", "")),
        )
    Console().print(table)


def keygen(
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for publisher.key and publisher.pub")],
) -> None:
    """Create an ed25519 publisher key pair: OUT/publisher.key (0600) and OUT/publisher.pub."""
    from otakit.signing import generate_private_key, private_key_pem, public_key_line

    with reporting_errors():
        private_path, public_path = out / "publisher.key", out / "publisher.pub"
        for path in (private_path, public_path):
            if path.exists():
                raise ValidationError(f"{path} exists already; refusing to overwrite a key")
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = generate_private_key()
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as private_file:
            private_file.write(private_key_pem(key))
        public_path.write_text(public_key_line(key) + "\n")
    typer.echo(f"private key: {private_path} (keep it secret; mode 0600)")
    typer.echo(f"public key:  {public_path}: add its line to each device's trusted_keys")
    typer.echo(public_key_line(key))


def register(app: typer.Typer) -> None:
    app.command()(keygen)
    app.command()(pack)
    app.command()(upload)
    app.command()(latest)
    app.command()(versions)

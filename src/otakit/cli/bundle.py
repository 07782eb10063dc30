"""``otakit bundle create``: an offline bundle (see ``otakit.bundle``) for devices without a network.

From a server: a package's latest version on a branch (or a given version) and, recursively, the
dependencies it needs, each the highest version on the same server and branch that satisfies its
requirement, chosen exactly as the daemon chooses them online (``otakit.daemon.plan.choose``). Or from
local zips and their content.json files. Either way the zips are checked against their contents and
written in install order; the device checks signatures when it installs the bundle.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from otakit.cli.errors import reporting_errors
from otakit.errors import NotFoundError, ValidationError, VerificationError

if TYPE_CHECKING:
    from packaging.specifiers import SpecifierSet

    from otakit.bundle import BundleItem
    from otakit.client import ServerClient
    from otakit.content import Content

# The command imports what it uses when it runs, as the publisher's commands do (start-up is paid on
# every call of the CLI).

__all__ = ["bundle_app"]

bundle_app = typer.Typer(
    help="Offline bundles: packages with their dependencies in one file, for devices without a network.",
    no_args_is_help=True,
)


@bundle_app.command()
def create(
    ctx: typer.Context,
    out: Annotated[
        Path, typer.Argument(metavar="OUT", help="the bundle to write (app.otabundle)", show_default=False)
    ],
    server: Annotated[
        str | None,
        typer.Option(
            "--server", "-s", help="the otakit server's URL", envvar="OTAKIT_SERVER", show_default=False
        ),
    ] = None,
    package: Annotated[
        str | None, typer.Option("--package", "-p", help="the package to bundle", show_default=False)
    ] = None,
    branch: Annotated[
        str | None, typer.Option("--branch", "-b", help="its branch", show_default=False)
    ] = None,
    version: Annotated[
        str | None,
        typer.Option("--version", "-V", help="this version instead of the latest", show_default=False),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(help="a bearer token sent with every request to the server", show_default=False),
    ] = None,
    zips: Annotated[
        list[Path] | None,
        typer.Option("--zip", help="instead of a server: a package zip (repeatable)", show_default=False),
    ] = None,
    contents: Annotated[
        list[Path] | None,
        typer.Option(
            "--content",
            help="the content.json of the --zip in the same place (repeatable)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Write OUT: PACKAGE from --server with the dependencies it needs, or the --zip/--content pairs.

    Prints one line per package, in install order, and one with the bundle's path and size."""
    from otakit.bundle import open_bundle

    with reporting_errors():
        if zips or contents:
            source = ctx.get_parameter_source("server")  # OTAKIT_SERVER alone is no conflict
            server_given = source is not None and source.name == "COMMANDLINE"
            remote = [
                flag
                for flag, value in (
                    ("--server", server if server_given else None),
                    ("--package", package),
                    ("--branch", branch),
                    ("--version", version),
                    ("--token", token),
                )
                if value is not None
            ]
            if remote:
                raise ValidationError(
                    f"give either --server, --package and --branch or --zip/--content pairs, not both "
                    f"({', '.join(remote)} with --zip/--content)"
                )
            _from_files(out, zips or [], contents or [])
        else:
            if server is None or package is None or branch is None:
                raise ValidationError(
                    "give --server, --package and --branch (or --zip and --content pairs of local files)"
                )
            _from_server(out, server, package, branch, version, token)
        with open_bundle(out) as written:
            for item in written.packages:
                signed = item.content.signature
                typer.echo(
                    f"{item.content.package} {item.content.version} (branch {item.content.branch}): "
                    f"{item.size} bytes, "
                    + (f"signed by key {signed.keyid}" if signed is not None else "unsigned")
                )
            count = len(written.packages)
        typer.echo(f"wrote {out}: {count} package(s), {out.stat().st_size} bytes")


def _from_files(out: Path, zips: list[Path], contents: list[Path]) -> None:
    from otakit.bundle import BundleItem, write_bundle
    from otakit.content import parse_content

    if len(zips) != len(contents):
        raise ValidationError(
            f"each --zip needs its --content: got {len(zips)} --zip and {len(contents)} --content"
        )
    items: list[BundleItem] = []
    for zip_path, content_path in zip(zips, contents, strict=True):
        if not zip_path.is_file():
            raise ValidationError(f"{zip_path} is not a file")
        items.append(BundleItem(parse_content(content_path.read_bytes(), str(content_path)), zip_path))
    write_bundle(out, items)


def _from_server(
    out: Path, server: str, package: str, branch: str, version: str | None, token: str | None
) -> None:
    import tempfile

    from otakit.bundle import BundleItem, write_bundle
    from otakit.client import ServerClient

    with ServerClient(server, token=token) as client:
        order = _resolve(client, package, branch, version)
        parent = out.parent
        if not parent.is_dir():
            raise ValidationError(f"{parent} is not a folder")
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=parent) as temp:
            items: list[BundleItem] = []
            for content in order:
                zip_path = Path(temp) / content.file_name
                client.download(content, zip_path)
                items.append(BundleItem(content, zip_path))
            write_bundle(out, items)


def _resolve(client: ServerClient, package: str, branch: str, version: str | None) -> list[Content]:
    """The package asked for and the dependencies it needs, in install order (it last).

    As the daemon's online resolution (``Updater.resolve``) with nothing installed: each requirement is
    the highest version on the dependent's server and branch that satisfies it, a package already
    chosen must satisfy every later requirement on it, and a cycle or an unsatisfiable requirement is an
    error, raised before anything is downloaded.
    """
    from otakit.bundle import dependency_order
    from otakit.daemon.plan import choose

    root = _root(client, package, branch, version)
    chosen: dict[str, Content] = {root.package: root}
    queue = [root]
    while queue:
        content = queue.pop()
        for name, spec in content.requirements.items():
            if name == content.package:  # the original project listed packages as their own dependency
                _require(spec, content, content)
                continue
            if name in chosen:
                _require(spec, chosen[name], content)
                continue
            pick = choose(spec, _versions(client, name, content.branch))
            if pick is None:
                raise ValidationError(
                    f"{content.package} {content.version} needs {name}{spec or ''}, which no version on "
                    f"{client.base_url} (branch {content.branch}) satisfies"
                )
            chosen[name] = pick
            queue.append(pick)
    return dependency_order(list(chosen.values()))


def _root(client: ServerClient, package: str, branch: str, version: str | None) -> Content:
    from otakit.versions import parse_version

    if version is None:
        return _same(client.latest(package, branch), client, package, branch)
    wanted = parse_version(version)
    try:
        listed = client.versions(package, branch, version)
    except NotFoundError:
        listed = []
    for entry in listed:
        content = _entry_content(entry, client, package, branch)
        if content.parsed_version == wanted:
            return content
    raise NotFoundError(f"{package} {version} is not on {client.base_url} (branch {branch})")


def _versions(client: ServerClient, package: str, branch: str) -> list[Content]:
    """Every version of ``package`` on ``branch`` that the server lists (none: [])."""
    try:
        listed = client.versions(package, branch)
    except NotFoundError:
        return []
    return [_entry_content(entry, client, package, branch) for entry in listed]


def _entry_content(entry: object, client: ServerClient, package: str, branch: str) -> Content:
    from otakit.content import parse_content

    raw = entry.get("content") if isinstance(entry, dict) else None
    if not isinstance(raw, dict):
        raise VerificationError(f"{client.base_url} listed a version of {package} without a content.json")
    try:
        content = parse_content(raw, f"content.json from {client.base_url}")
    except ValidationError as exc:
        raise VerificationError(str(exc)) from None
    return _same(content, client, package, branch)


def _same(content: Content, client: ServerClient, package: str, branch: str) -> Content:
    """``content``, if it is for the package and branch that were asked for."""
    if (content.package, content.branch) != (package, branch):
        raise VerificationError(
            f"{client.base_url} answered for {content.package} on branch {content.branch}, "
            f"not {package} on branch {branch}"
        )
    return content


def _require(spec: SpecifierSet, have: Content, by: Content) -> None:
    if not spec.contains(have.parsed_version, prereleases=True):
        raise ValidationError(
            f"{by.package} {by.version} needs {have.package}{spec}, but the bundle's "
            f"{have.package} is {have.version}"
        )

"""The ``otakit`` command: one Typer app, errors printed as one line on stderr."""

from __future__ import annotations

from typing import Annotated

import typer

import otakit
from otakit.cli import fleet
from otakit.cli.bundle import bundle_app
from otakit.cli.errors import set_debug
from otakit.cli.publish import register
from otakit.cli.server import db_app, server_app
from otakit.cli.users import user_app

__all__ = ["app", "main"]

app = typer.Typer(help="otakit: over-the-air updates for devices.", no_args_is_help=True)
register(app)
app.add_typer(server_app, name="server")
app.add_typer(db_app, name="db")
app.add_typer(user_app, name="user")
app.add_typer(bundle_app, name="bundle")
fleet.register(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"otakit {otakit.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="show a traceback on errors")] = False,
) -> None:
    """otakit: over-the-air updates for devices."""
    set_debug(debug)


def main() -> None:
    app()

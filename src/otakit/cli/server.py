"""``otakit server`` (run it), ``otakit server fsck`` and ``otakit db upgrade``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from otakit.cli.errors import reporting_errors

if TYPE_CHECKING:  # the server's modules load only for the server's commands
    from otakit.server.repository import Repository
    from otakit.server.settings import ServerSettings

server_app = typer.Typer(help="Run or check the otakit server.", no_args_is_help=False)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML or JSON settings file (OTAKIT_* variables win)")
]


def server_settings(config: Path | None, **overrides: Any) -> ServerSettings:
    from otakit.server.settings import load_settings

    return load_settings(config, **{k: v for k, v in overrides.items() if v is not None})


def server_repository(settings: ServerSettings) -> Repository:
    from otakit.server.repository import open_repository

    return open_repository(settings.database_url)  # ValidationError for an unsupported URL


async def _reach_database(settings: ServerSettings) -> None:
    """Connect once and let go: an unreachable database fails here, as one line, rather than in
    uvicorn's lifespan, which prints a traceback."""
    repo = server_repository(settings)
    try:
        await repo.connect()
    finally:
        await repo.close()


@server_app.callback(invoke_without_command=True)
def server(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="listen address (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="listen port (default 8000)")] = None,
    config: ConfigOption = None,
) -> None:
    """Run the server (uvicorn) until interrupted."""
    if ctx.invoked_subcommand is not None:
        return
    import asyncio

    import uvicorn

    from otakit.server.app import create_app

    with reporting_errors():
        settings = server_settings(config, host=host, port=port)
        asyncio.run(_reach_database(settings))
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        http="httptools",
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or None,
    )


async def _fsck(settings: ServerSettings) -> str:
    from otakit.server.blobstore import open_blobstore
    from otakit.server.inflight import InFlight
    from otakit.server.publish import recover

    async with server_repository(settings) as repo:
        await repo.upgrade()
        store = open_blobstore(settings)
        try:
            await store.ping()
            return str(
                await recover(repo, store, InFlight(repo, lease_seconds=settings.upload_lease_seconds))
            )
        finally:
            await store.close()


@server_app.command()
def fsck(config: ConfigOption = None) -> None:
    """Finish or undo interrupted uploads (of dead servers, or whose lease ran out), remove orphan
    objects and abort unfinished multipart uploads."""
    with reporting_errors():
        import asyncio

        typer.echo(asyncio.run(_fsck(server_settings(config))))


async def _upgrade(settings: ServerSettings) -> list[str]:
    async with server_repository(settings) as repo:
        return await repo.upgrade()


@db_app.command()
def upgrade(config: ConfigOption = None) -> None:
    """Apply the database migrations that have not run yet."""
    with reporting_errors():
        import asyncio

        applied = asyncio.run(_upgrade(server_settings(config)))
    typer.echo("applied: " + ", ".join(applied) if applied else "the database is up to date")

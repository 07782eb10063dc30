"""``otakit-daemon --config PATH``: the device daemon's process; ``otakit-daemon install-bundle FILE``: hand
an offline bundle to the running daemon and follow its job."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from otakit.errors import OtakitError

__all__ = ["app", "main"]

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="the daemon's JSON config file")]
DEFAULT_CONFIG = Path("/etc/otakit/daemon.json")

app = typer.Typer(add_completion=False, help="The otakit device daemon.")


@app.callback(invoke_without_command=True)
def run(
    ctx: typer.Context,
    config: ConfigOption = DEFAULT_CONFIG,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
) -> None:
    """Run the otakit device daemon until SIGTERM/SIGINT."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from otakit.daemon.api import create_daemon_app
    from otakit.daemon.service import Daemon

    # journald adds the time and unit; one line per event, level first.
    logging.basicConfig(
        stream=sys.stderr, level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        daemon = Daemon(config)
    except OtakitError as exc:
        typer.echo(f"otakit-daemon: error: {exc}", err=True)
        raise typer.Exit(1) from None
    listen = daemon.store.config.api
    if listen.debug:
        logging.getLogger().setLevel(logging.DEBUG)
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again with the handler it found:
    # make that handler a clean exit, so that a stop asked for is status 0, not "killed by SIGTERM".
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(
        create_daemon_app(daemon),
        host=listen.host,
        port=listen.port,
        log_level=log_level.lower(),
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=None,
    )


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


@app.command("install-bundle")
def install_bundle(
    bundle: Annotated[Path, typer.Argument(help="the .otabundle file (from `otakit bundle create`)")],
    config: ConfigOption = DEFAULT_CONFIG,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the job")] = 3600.0,
) -> None:
    """Install an offline bundle through the running daemon's local API (POST /bundles), printing its
    job's log; exit 0 when it succeeded, 1 otherwise. No network beyond the device's loopback."""
    from otakit.daemon.bundle_client import install_through_api

    try:
        code = install_through_api(config, bundle, timeout=timeout, say=typer.echo)
    except OtakitError as exc:
        typer.echo(f"otakit-daemon: error: {exc}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


def main() -> None:
    app()

"""``otakit-daemon --config PATH``: the device daemon's process."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from otakit.errors import OtakitError

__all__ = ["main"]


def run(
    config: Annotated[Path, typer.Option("--config", "-c", help="the daemon's JSON config file")] = Path(
        "/etc/otakit/daemon.json"
    ),
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
) -> None:
    """Run the otakit device daemon until SIGTERM/SIGINT."""
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


def main() -> None:
    typer.run(run)

"""Errors at the command line's edge: one line on stderr and exit status 1, never a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from otakit.errors import OtakitError

__all__ = ["fail", "reporting_errors", "set_debug"]

_debug = False


def set_debug(value: bool) -> None:
    """With ``--debug``, errors propagate with their traceback instead."""
    global _debug
    _debug = value


def fail(message: str) -> typer.Exit:
    typer.echo(f"otakit: error: {message}", err=True)
    return typer.Exit(1)


def _describe(exc: OtakitError | OSError) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or exc}: {exc.filename}"
    return str(exc)


@contextmanager
def reporting_errors() -> Iterator[None]:
    try:
        yield
    except (OtakitError, OSError) as exc:
        if _debug:
            raise
        raise fail(_describe(exc)) from None

"""Errors at the command line's edge: one line on stderr and exit status 1, never a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from otakit.errors import OtakitError

__all__ = ["fail", "reporting_errors"]


def fail(message: str) -> typer.Exit:
    typer.echo(f"otakit: error: {message}", err=True)
    return typer.Exit(1)


@contextmanager
def reporting_errors() -> Iterator[None]:
    try:
        yield
    except OtakitError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)) from None

"""Database drivers, chosen by URL scheme: ``sqlite:///…`` (the default) or ``mysql://…``.

Each driver adapts one database library to the small interface of ``base``; the aggregates
(``otakit.server.repository``) write their queries once on top of it.
"""

from __future__ import annotations

from collections.abc import Callable

from otakit.errors import ValidationError
from otakit.server.db.base import Driver, Executed, Lock, Params, Queries, Row, Transaction
from otakit.server.db.urls import ACCEPTED, MYSQL_SCHEMES, redact

__all__ = ["Driver", "Executed", "Lock", "Params", "Queries", "Row", "Transaction", "open_driver"]


def _sqlite(url: str) -> Driver:
    from otakit.server.db.sqlite import SQLiteDriver

    return SQLiteDriver(url)


def _mysql(url: str) -> Driver:
    from otakit.server.db.mysql import MySQLDriver  # aiomysql is imported only when it is used

    return MySQLDriver(url)


_DRIVERS: dict[str, Callable[[str], Driver]] = {"sqlite": _sqlite, **dict.fromkeys(MYSQL_SCHEMES, _mysql)}


def open_driver(url: str) -> Driver:
    """A not-yet-connected driver for ``url``; ``ValidationError`` for a URL no driver takes."""
    scheme = url.split(":", 1)[0].lower()
    driver = _DRIVERS.get(scheme)
    if driver is None:
        raise ValidationError(f"unsupported database URL {redact(url)!r}: use {ACCEPTED}")
    return driver(url)

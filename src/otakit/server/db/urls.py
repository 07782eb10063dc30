"""Database URLs: what each driver connects to, and how a URL is shown in a message (no password)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from otakit.errors import ValidationError

__all__ = ["ACCEPTED", "MYSQL_SCHEMES", "mysql_params", "redact", "sqlite_path"]

ACCEPTED = "sqlite:///relative.db, sqlite:////absolute.db or mysql://user:pass@host:3306/db"
MYSQL_SCHEMES = ("mysql", "mariadb", "mysql+aiomysql")
# Everything between "scheme://user:" and the last "@" is the password, however badly it is escaped.
_PASSWORD = re.compile(r"^([^:/?#]+://[^:@/?#]*:).*@")


def redact(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``."""
    return _PASSWORD.sub(r"\1***@", url, count=1)


def sqlite_path(url: str) -> str:
    """``sqlite:///rel/path.db`` is relative to the working folder, ``sqlite:////abs/path.db`` absolute."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValidationError(f"not a SQLite URL: {url!r} (expected sqlite:///path/to/file.db)")
    return url[len(prefix) :]


def mysql_params(url: str) -> dict[str, Any]:
    """``aiomysql.connect`` arguments for ``mysql://user:pass@host:3306/db`` (or ``mariadb://``).

    User and password are percent-decoded; ``?unix_socket=/path`` connects through a socket.
    """
    shown = redact(url)
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as exc:  # a bad port or IPv6 address
        raise ValidationError(f"the MySQL URL {shown!r} is malformed ({exc})") from None
    if parts.scheme.lower() not in MYSQL_SCHEMES:
        raise ValidationError(f"not a MySQL URL: {shown!r} (expected mysql://user:pass@host:3306/db)")
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise ValidationError(f"the MySQL URL {shown!r} names no database (mysql://user:pass@host/db)")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - {"unix_socket"}
    if unknown:
        raise ValidationError(f"unsupported MySQL URL options in {shown!r}: {', '.join(sorted(unknown))}")
    params: dict[str, Any] = {
        "host": host or "localhost",
        "port": port or 3306,
        "user": unquote(parts.username) if parts.username else None,  # None: the driver's default
        "password": unquote(parts.password) if parts.password is not None else "",
        "db": database,
        "charset": "utf8mb4",
    }
    if "unix_socket" in query:
        params["unix_socket"] = query["unix_socket"][-1]
    return params

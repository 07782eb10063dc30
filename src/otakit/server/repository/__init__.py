"""Package-version storage, chosen by URL scheme: ``sqlite:///…`` (default) or ``mysql://…``."""

from __future__ import annotations

from otakit.server.repository.base import Claim, Repository, VersionKey, VersionRow

__all__ = ["Claim", "Repository", "VersionKey", "VersionRow", "open_repository"]


def open_repository(url: str) -> Repository:
    """A not-yet-connected repository for ``url``."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from otakit.server.repository.sqlite import SQLiteRepository

        return SQLiteRepository(url)
    if scheme in ("mysql", "mariadb", "mysql+aiomysql"):
        from otakit.server.repository.mysql import MySQLRepository

        return MySQLRepository(url)
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:///path.db or mysql://user:pass@host/db")

"""What the server stores in its database, chosen by URL scheme: ``sqlite:///…`` (default) or ``mysql://…``."""

from __future__ import annotations

from otakit.server.db import open_driver
from otakit.server.repository.database import Repository
from otakit.server.repository.versions import Claim, VersionKey, VersionRow

__all__ = ["Claim", "Repository", "VersionKey", "VersionRow", "open_repository"]


def open_repository(url: str) -> Repository:
    """A not-yet-connected repository for ``url``; ``ValidationError`` for a URL no database takes."""
    return Repository(open_driver(url))

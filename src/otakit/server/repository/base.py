"""The storage interface for package versions: one ``Repository``, one implementation per database."""

from __future__ import annotations

import abc
import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

__all__ = ["COLUMNS", "Claim", "Repository", "VersionKey", "VersionRow", "list_query"]


@dataclass(frozen=True, slots=True)
class VersionKey:
    """What makes a version unique: package, branch and the sortable key of its parsed version."""

    name: str
    branch: str
    version_key: str


@dataclass(frozen=True, slots=True)
class VersionRow:
    """One stored version. ``content`` is the JSON text exactly as uploaded."""

    name: str
    branch: str
    version: str
    version_key: str
    content: str
    object_id: str

    @property
    def key(self) -> VersionKey:
        return VersionKey(self.name, self.branch, self.version_key)

    @property
    def content_json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.content)
        return value

    @property
    def sha256(self) -> str:
        return str(self.content_json["sha256"]).lower()


COLUMNS = "name, branch, version, version_key, content, object_id"


def list_query(
    placeholder: str, name: str, branch: str | None, version_key: str | None
) -> tuple[str, tuple[str, ...]]:
    """The ``list_versions`` query, parameterised with the driver's ``placeholder`` (``?`` or ``%s``)."""
    filters = [("name", name), ("branch", branch), ("version_key", version_key)]
    used = [(column, value) for column, value in filters if value is not None]
    where = " AND ".join(f"{column} = {placeholder}" for column, _ in used)
    sql = f"SELECT {COLUMNS} FROM ota WHERE {where} ORDER BY version_key DESC, branch"
    return sql, tuple(value for _, value in used)


class Claim(abc.ABC):
    """A write transaction holding the lock on one version key, across processes.

    ``existing`` is the row under the key when the claim was taken. Leaving the ``claim()`` block
    normally commits; an exception rolls back.
    """

    key: VersionKey
    existing: VersionRow | None

    async def put(self, row: VersionRow) -> None:
        """Insert the row, or replace ``existing`` with it. The row must be under the claimed key."""
        if row.key != self.key:
            raise ValueError(f"a claim on {self.key} cannot write {row.key}")
        await self._put(row)
        self.existing = row

    @abc.abstractmethod
    async def _put(self, row: VersionRow) -> None: ...


class Repository(abc.ABC):
    """Package versions in a database. Every method may raise ``UnavailableError``."""

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open connections; does not create or change tables (see ``upgrade``)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def upgrade(self) -> list[str]:
        """Apply the migrations that have not run yet, in order; return their names."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise ``UnavailableError`` unless the database answers."""

    @abc.abstractmethod
    async def latest(self, name: str, branch: str) -> VersionRow | None:
        """The highest version of ``name`` on ``branch`` (an index lookup, never a scan)."""

    @abc.abstractmethod
    async def get(self, key: VersionKey) -> VersionRow | None: ...

    @abc.abstractmethod
    async def list_versions(
        self, name: str, branch: str | None = None, version_key: str | None = None
    ) -> list[VersionRow]:
        """Versions of ``name``, optionally of one branch and/or one version; highest first."""

    @abc.abstractmethod
    def claim(self, key: VersionKey) -> AbstractAsyncContextManager[Claim]:
        """Lock ``key`` for writing until the block ends (see ``Claim``)."""

    @abc.abstractmethod
    def object_ids(self) -> AsyncIterator[str]:
        """Every stored row's object id (for recovery and fsck)."""

    async def __aenter__(self) -> Repository:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

"""Package versions (table ``ota``): their rows, and every query on them, written once for every driver."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from otakit.errors import ConflictError
from otakit.server.db import Driver, Lock, Transaction
from otakit.server.db.columns import flag, integer, number, text

__all__ = ["Claim", "PackageSummary", "VersionKey", "VersionRow", "Versions"]


@dataclass(frozen=True, slots=True)
class PackageSummary:
    """One package and branch: how many versions it has, held ones included."""

    name: str
    branch: str
    versions: int


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
    released: bool = True
    """Offered to devices by ``latest``; a held version (False) is stored and listed only."""
    size: int | None = None
    """The file's length in bytes (``None`` on rows stored before it was recorded)."""
    uploaded: float | None = None
    """When the file was uploaded, Unix seconds (``None`` on rows stored before it was recorded)."""

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


_COLUMNS = "name, branch, version, version_key, content, object_id, released, size, uploaded"
_SELECT = f"SELECT {_COLUMNS} FROM ota"
_BY_KEY = f"{_SELECT} WHERE name = ? AND branch = ? AND version_key = ?"
# One step down the index (name, branch, released, version_key), backwards. ``released = 1`` is a
# literal, not a parameter, so that both databases plan it as an equality on the index's third column.
_LATEST = f"{_SELECT} WHERE name = ? AND branch = ? AND released = 1 ORDER BY version_key DESC LIMIT 1"
_INSERT = f"INSERT INTO ota ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
# list_versions, by which of its optional filters (branch, version_key) are given.
_LIST = {
    (with_branch, with_key): f"{_SELECT} WHERE name = ?"
    + (" AND branch = ?" if with_branch else "")
    + (" AND version_key = ?" if with_key else "")
    + " ORDER BY version_key DESC, branch"
    for with_branch in (False, True)
    for with_key in (False, True)
}


def _row(values: Sequence[object]) -> VersionRow:
    name, branch, version, version_key, content, object_id = map(text, values[:6])
    size = None if values[7] is None else integer(values[7])
    uploaded = None if values[8] is None else number(values[8])
    return VersionRow(name, branch, version, version_key, content, object_id, flag(values[6]), size, uploaded)


class Claim:
    """A write transaction holding the lock on one version key, across processes.

    ``existing`` is the row under the key when the claim was taken. Leaving the ``claim()`` block
    normally commits; an exception rolls back.
    """

    def __init__(
        self, tx: Transaction, key: VersionKey, existing: VersionRow | None, update: str, set_released: str
    ) -> None:
        self._tx = tx
        self._update = update
        self._set_released = set_released
        self.key = key
        self.existing = existing

    @property
    def transaction(self) -> Transaction:
        """The claim's transaction, for other aggregates' writes that must commit with it."""
        return self._tx

    async def put(self, row: VersionRow) -> None:
        """Insert the row, or replace ``existing`` with it. The row must be under the claimed key.

        The row's ``released`` flag is stored as it is: a forced re-upload is released or held by its
        own request, not by the flag of the version it replaces.
        """
        if row.key != self.key:
            raise ValueError(f"a claim on {self.key} cannot write {row.key}")
        try:
            if self.existing is None:
                await self._tx.execute(
                    _INSERT,
                    (
                        row.name,
                        row.branch,
                        row.version,
                        row.version_key,
                        row.content,
                        row.object_id,
                        int(row.released),
                        row.size,
                        row.uploaded,
                    ),
                )
            else:
                await self._tx.execute(
                    self._update,
                    (
                        row.version,
                        row.content,
                        row.object_id,
                        int(row.released),
                        row.size,
                        row.uploaded,
                        row.name,
                        row.branch,
                        row.version_key,
                    ),
                )
        except ConflictError as exc:  # another row has its object id, or a writer that took no claim
            raise ConflictError(f"{row.name} {row.version} on branch {row.branch} exists already") from exc
        self.existing = row

    async def set_released(self, released: bool) -> None:
        """Change ``existing``'s flag only (its file and content stay as they are)."""
        if self.existing is None:
            raise ValueError(f"no version under {self.key} to release or hold")
        await self._tx.execute(
            self._set_released, (int(released), self.key.name, self.key.branch, self.key.version_key)
        )
        self.existing = replace(self.existing, released=released)

    async def delete(self) -> None:
        """Remove ``existing``'s row (its files are the caller's)."""
        if self.existing is None:
            raise ValueError(f"no version under {self.key} to delete")
        await self._tx.execute(
            "DELETE FROM ota WHERE name = ? AND branch = ? AND version_key = ?",
            (self.key.name, self.key.branch, self.key.version_key),
        )
        self.existing = None


class Versions:
    """The versions aggregate on one driver. Every method may raise ``UnavailableError``."""

    def __init__(self, driver: Driver) -> None:
        self._driver = driver
        self._update = (
            "UPDATE ota SET version = ?, content = ?, object_id = ?, released = ?, size = ?, uploaded = ?,"
            f" updated_at = {driver.now}"
            " WHERE name = ? AND branch = ? AND version_key = ?"
        )
        self._set_released = (
            f"UPDATE ota SET released = ?, updated_at = {driver.now}"
            " WHERE name = ? AND branch = ? AND version_key = ?"
        )

    async def latest(self, name: str, branch: str) -> VersionRow | None:
        """The highest released version of ``name`` on ``branch`` (an index lookup, never a scan)."""
        found = await self._driver.fetch_one(_LATEST, (name, branch))
        return _row(found) if found else None

    async def get(self, key: VersionKey) -> VersionRow | None:
        found = await self._driver.fetch_one(_BY_KEY, (key.name, key.branch, key.version_key))
        return _row(found) if found else None

    async def list_versions(
        self, name: str, branch: str | None = None, version_key: str | None = None
    ) -> list[VersionRow]:
        """Versions of ``name``, held ones too, optionally of one branch and/or one version; highest first."""
        params = [value for value in (name, branch, version_key) if value is not None]
        rows = await self._driver.fetch(_LIST[branch is not None, version_key is not None], params)
        return [_row(r) for r in rows]

    async def set_released(self, key: VersionKey, released: bool) -> bool:
        """Release or hold the version under ``key``; False when there is no such version.

        Under the key's claim, so that it is ordered with uploads of that key (a forced re-upload
        in flight either lands before, and is then released or held here, or after, with its own flag).
        """
        async with self.claim(key) as claim:
            if claim.existing is None:
                return False
            if claim.existing.released != released:
                await claim.set_released(released)
            return True

    @asynccontextmanager
    async def claim(self, key: VersionKey) -> AsyncIterator[Claim]:
        """Lock ``key`` for writing until the block ends (see ``Claim``)."""
        # The lock's name is what it has always been, so that processes of the previous release
        # exclude this one's during a rolling upgrade.
        lock = Lock(
            (key.name, key.branch, key.version_key),
            f"{key.name} on branch {key.branch} is being written by another upload; try again",
        )
        async with self._driver.transaction(lock) as tx:
            # A plain consistent read: the lock already excludes other writers.
            found = await tx.fetch_one(_BY_KEY, (key.name, key.branch, key.version_key))
            yield Claim(tx, key, _row(found) if found else None, self._update, self._set_released)

    async def packages(self) -> list[PackageSummary]:
        """Every package and branch with at least one version, by name (one walk of the unique index)."""
        rows = await self._driver.fetch(
            "SELECT name, branch, COUNT(*) FROM ota GROUP BY name, branch ORDER BY name, branch"
        )
        return [PackageSummary(text(name), text(branch), integer(n)) for name, branch, n in rows]

    async def object_ids(self) -> AsyncIterator[str]:
        """Every stored row's object id (for recovery and fsck)."""
        for (object_id,) in await self._driver.fetch("SELECT object_id FROM ota"):
            yield text(object_id)

"""Uploads in flight (table ``uploads``): who holds each, until when, and the version it will write.

An entry exists from before an upload's first byte is stored until its commit has ended (and for a
version's deletion, around its transaction). Its ``owner`` renews ``lease_until`` while it works. Recovery,
in any process, *takes* an entry whose owner is dead or whose lease ran out with one compare-and-set, so
exactly one process finishes or undoes it; the owner in turn *fences* its commit inside the version
key's transaction, so an entry taken from it can no longer be committed by it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from otakit.errors import UnavailableError
from otakit.server.db import Driver, Transaction
from otakit.server.db.columns import number, text

__all__ = ["UploadEntry", "Uploads"]

_COLUMNS = "upload_id, owner, lease_until, name, branch, version"


@dataclass(frozen=True, slots=True)
class UploadEntry:
    """One upload in flight. ``name``/``branch``/``version`` are set once its content.json is known and
    before its commit begins (``None`` until then: such an entry has nothing committed to reconcile)."""

    upload_id: str
    owner: str
    lease_until: float
    name: str | None = None
    branch: str | None = None
    version: str | None = None


def _optional(value: object) -> str | None:
    return None if value is None else text(value)


def _entry(values: tuple[object, ...]) -> UploadEntry:
    upload_id, owner, lease_until, name, branch, version = values
    return UploadEntry(
        text(upload_id),
        text(owner),
        number(lease_until),
        _optional(name),
        _optional(branch),
        _optional(version),
    )


class Uploads:
    """The uploads aggregate on one driver. Every method may raise ``UnavailableError``."""

    def __init__(self, driver: Driver) -> None:
        self._driver = driver

    async def begin(self, upload_id: str, owner: str, lease_until: float, now: float) -> None:
        await self._driver.execute(
            "INSERT INTO uploads (upload_id, owner, lease_until, created) VALUES (?, ?, ?, ?)",
            (upload_id, owner, lease_until, now),
        )

    async def name(self, upload_id: str, owner: str, name: str, branch: str, version: str) -> None:
        """Record the version the upload will write; ``UnavailableError`` if the entry is no longer ours."""
        done = await self._driver.execute(
            "UPDATE uploads SET name = ?, branch = ?, version = ? WHERE upload_id = ? AND owner = ?",
            (name, branch, version, upload_id, owner),
        )
        if done.rowcount != 1:
            raise _given_up(upload_id)

    async def fence(self, tx: Transaction, upload_id: str, owner: str, lease_until: float) -> None:
        """Inside a commit's transaction: the entry is still ``owner``'s (and renewed), or
        ``UnavailableError``. Its row lock orders the commit with a concurrent ``take``."""
        done = await tx.execute(
            "UPDATE uploads SET lease_until = ? WHERE upload_id = ? AND owner = ?",
            (lease_until, upload_id, owner),
        )
        if done.rowcount != 1:
            raise _given_up(upload_id)

    async def renew(self, upload_ids: Iterable[str], owner: str, lease_until: float) -> None:
        """Extend the leases of ``owner``'s entries among ``upload_ids`` (one statement per 500)."""
        ids = list(upload_ids)
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            marks = ", ".join("?" for _ in batch)
            await self._driver.execute(
                f"UPDATE uploads SET lease_until = ? WHERE owner = ? AND upload_id IN ({marks})",
                (lease_until, owner, *batch),
            )

    async def end(self, upload_id: str) -> None:
        await self._driver.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))

    async def get(self, upload_id: str) -> UploadEntry | None:
        found = await self._driver.fetch_one(
            f"SELECT {_COLUMNS} FROM uploads WHERE upload_id = ?", (upload_id,)
        )
        return _entry(found) if found else None

    async def all(self) -> list[UploadEntry]:
        rows = await self._driver.fetch(f"SELECT {_COLUMNS} FROM uploads ORDER BY created, upload_id")
        return [_entry(row) for row in rows]

    async def expired(self, now: float) -> list[UploadEntry]:
        """Entries whose lease ran out (an index range on ``lease_until``)."""
        rows = await self._driver.fetch(
            f"SELECT {_COLUMNS} FROM uploads WHERE lease_until < ? ORDER BY lease_until", (now,)
        )
        return [_entry(row) for row in rows]

    async def take(
        self, entry: UploadEntry, owner: str, lease_until: float, *, expired_at: float | None
    ) -> bool:
        """Make ``entry`` ``owner``'s if its owner is still the one read (and, with ``expired_at``, its
        lease still ran out before that time): True for exactly one of several processes trying at once.
        Without ``expired_at`` the caller knows the old owner is dead (it cannot renew)."""
        sql = "UPDATE uploads SET owner = ?, lease_until = ? WHERE upload_id = ? AND owner = ?"
        params: tuple[object, ...] = (owner, lease_until, entry.upload_id, entry.owner)
        if expired_at is not None:
            sql += " AND lease_until < ?"
            params += (expired_at,)
        done = await self._driver.execute(sql, params)
        return done.rowcount == 1


def _given_up(upload_id: str) -> UnavailableError:
    return UnavailableError(
        f"upload {upload_id} was taken over by recovery (this server could not renew its lease in time);"
        " send it again"
    )

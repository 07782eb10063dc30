"""Deltas between stored files (table ``deltas``): who makes each, and what came of it.

A delta is asked for by the pair of objects it goes between. The first process to ask inserts the row
``making`` (the primary key lets exactly one do so) and makes it under a lease; the others wait for the
row to become ``ready`` (the delta's object) or ``none`` (not worth it), or take it over once the maker's
lease ran out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from otakit.errors import ConflictError
from otakit.server.db import Driver
from otakit.server.db.columns import integer, number, text

__all__ = ["DeltaRow", "Deltas"]

State = Literal["making", "ready", "none"]
_COLUMNS = "from_object, to_object, state, object_id, size, sha256, owner, lease_until"


@dataclass(frozen=True, slots=True)
class DeltaRow:
    from_object: str
    to_object: str
    state: State
    object_id: str | None = None
    size: int | None = None
    sha256: str | None = None
    owner: str | None = None
    lease_until: float | None = None


def _row(values: tuple[object, ...]) -> DeltaRow:
    from_object, to_object, state, object_id, size, sha256, owner, lease_until = values
    found = text(state)
    if found not in ("making", "ready", "none"):
        raise ValueError(f"unknown delta state {found!r}")
    return DeltaRow(
        text(from_object),
        text(to_object),
        found,  # type: ignore[arg-type]  # checked just above
        None if object_id is None else text(object_id),
        None if size is None else integer(size),
        None if sha256 is None else text(sha256),
        None if owner is None else text(owner),
        None if lease_until is None else number(lease_until),
    )


class Deltas:
    """The deltas aggregate on one driver. Every method may raise ``UnavailableError``."""

    def __init__(self, driver: Driver) -> None:
        self._driver = driver

    async def get(self, from_object: str, to_object: str) -> DeltaRow | None:
        found = await self._driver.fetch_one(
            f"SELECT {_COLUMNS} FROM deltas WHERE from_object = ? AND to_object = ?", (from_object, to_object)
        )
        return _row(found) if found else None

    async def claim(
        self, from_object: str, to_object: str, owner: str, lease_until: float, now: float
    ) -> bool:
        """Begin making the delta; False when another process began first."""
        try:
            await self._driver.execute(
                "INSERT INTO deltas (from_object, to_object, state, owner, lease_until, created)"
                " VALUES (?, ?, 'making', ?, ?, ?)",
                (from_object, to_object, owner, lease_until, now),
            )
        except ConflictError:
            return False
        return True

    async def take(self, row: DeltaRow, owner: str, lease_until: float, now: float) -> bool:
        """Take over a ``making`` row whose maker's lease ran out; True for exactly one taker."""
        done = await self._driver.execute(
            "UPDATE deltas SET owner = ?, lease_until = ? WHERE from_object = ? AND to_object = ?"
            " AND state = 'making' AND owner = ? AND lease_until < ?",
            (owner, lease_until, row.from_object, row.to_object, row.owner, now),
        )
        return done.rowcount == 1

    async def renew(self, from_object: str, to_object: str, owner: str, lease_until: float) -> None:
        await self._driver.execute(
            "UPDATE deltas SET lease_until = ? WHERE from_object = ? AND to_object = ? AND owner = ?"
            " AND state = 'making'",
            (lease_until, from_object, to_object, owner),
        )

    async def finish(
        self,
        from_object: str,
        to_object: str,
        owner: str,
        *,
        object_id: str | None = None,
        size: int | None = None,
        sha256: str | None = None,
    ) -> bool:
        """Record the made delta (``object_id``), or ``none`` without one; False when the row is no
        longer this maker's (taken over, or dropped), and nothing is changed then."""
        state = "none" if object_id is None else "ready"
        done = await self._driver.execute(
            "UPDATE deltas SET state = ?, object_id = ?, size = ?, sha256 = ?, owner = NULL,"
            " lease_until = NULL WHERE from_object = ? AND to_object = ? AND owner = ? AND state = 'making'",
            (state, object_id, size, sha256, from_object, to_object, owner),
        )
        return done.rowcount == 1

    async def drop(self, from_object: str, to_object: str) -> None:
        await self._driver.execute(
            "DELETE FROM deltas WHERE from_object = ? AND to_object = ?", (from_object, to_object)
        )

    async def object_ids(self) -> set[str]:
        """Every ready delta's object (for recovery and the sweep)."""
        rows = await self._driver.fetch("SELECT object_id FROM deltas WHERE object_id IS NOT NULL")
        return {text(object_id) for (object_id,) in rows}

    async def references(self, object_id: str) -> bool:
        found = await self._driver.fetch_one("SELECT 1 FROM deltas WHERE object_id = ? LIMIT 1", (object_id,))
        return found is not None

    async def orphaned(self) -> list[DeltaRow]:
        """Rows between files no version points at any more (deleted or replaced): to be dropped."""
        rows = await self._driver.fetch(
            f"SELECT {_COLUMNS} FROM deltas WHERE state <> 'making' AND ("
            " NOT EXISTS (SELECT 1 FROM ota WHERE ota.object_id = deltas.from_object)"
            " OR NOT EXISTS (SELECT 1 FROM ota WHERE ota.object_id = deltas.to_object))"
        )
        return [_row(row) for row in rows]

"""The database's change counter, and this process's reading of it: the stamp its caches live under.

Every commit that changes what a server process may cache (an upload, a release or hold, a rollout's
change, a device deleted, accepted or pinned) bumps the counter before its 200. Each process reads it
every ``REFRESH_SECONDS`` (``refresh``, a background task) and on its own bumps, so its caches end at
once after its own changes and within ``REFRESH_SECONDS`` after another host's; entries also expire after
``latest_cache_seconds`` whatever the counter says, which bounds the rest (a process that died between
its commit and its bump, a database that could not be reached for the bump).
"""

from __future__ import annotations

import logging

from otakit.errors import UnavailableError
from otakit.server.db import Driver
from otakit.server.db.columns import integer

__all__ = ["REFRESH_SECONDS", "Changes"]

REFRESH_SECONDS = 0.5

log = logging.getLogger("otakit.server")


class Changes:
    """The ``changes`` row on one driver, and the stamp this process's caches are made under."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self._seen: int | None = None  # the counter as last read
        self._local = 0  # this process's own bumps, so they end its caches even when the database is down

    @property
    def stamp(self) -> tuple[int | None, int]:
        """A value that changes when any process commits a change (cheap: no I/O)."""
        return self._seen, self._local

    async def current(self) -> int:
        row = await self.driver.fetch_one("SELECT counter FROM changes WHERE id = 1")
        return integer(row[0]) if row is not None else 0

    async def refresh(self) -> None:
        """Read the counter (``UnavailableError`` when the database cannot be reached)."""
        self._seen = await self.current()

    async def bump(self) -> None:
        """After a commit, before its 200: end every process's caches. A database that cannot be reached
        for it is logged, not raised: the commit is done, and other processes' entries expire anyway."""
        self._local += 1
        try:
            async with self.driver.transaction() as tx:
                await tx.execute("UPDATE changes SET counter = counter + 1 WHERE id = 1")
                row = await tx.fetch_one("SELECT counter FROM changes WHERE id = 1")
        except UnavailableError as exc:
            log.warning(
                "the change counter was not bumped (%s): other processes may answer from their"
                " caches for up to latest_cache_seconds",
                exc,
            )
            return
        if row is not None:
            self._seen = integer(row[0])

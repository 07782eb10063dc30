"""``Repository``: the server's database, one driver and the aggregates whose queries run on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

from otakit.server.db import Driver
from otakit.server.db.migrations import upgrade
from otakit.server.repository.changes import Changes
from otakit.server.repository.deltas import Deltas
from otakit.server.repository.devices import Devices
from otakit.server.repository.rollouts import Rollouts
from otakit.server.repository.uploads import Uploads
from otakit.server.repository.users import Users
from otakit.server.repository.versions import Claim, VersionKey, VersionRow, Versions

__all__ = ["Repository"]


class Repository:
    """What the server stores in its database. Every method may raise ``UnavailableError``.

    Each aggregate is an attribute (``versions``), its queries written once against ``driver``. The
    versions' methods are also here, where the server's callers have always found them.
    """

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.versions = Versions(driver)
        self.devices = Devices(driver)
        self.rollouts = Rollouts(driver)
        self.users = Users(driver)
        self.changes = Changes(driver)
        self.uploads = Uploads(driver)
        self.deltas = Deltas(driver)

    def __repr__(self) -> str:
        return f"Repository({self.driver!r})"

    async def connect(self) -> None:
        """Open connections; does not create or change tables (see ``upgrade``)."""
        await self.driver.connect()

    async def close(self) -> None:
        await self.driver.close()

    async def upgrade(self) -> list[str]:
        """Apply the migrations that have not run yet, in order; return their names."""
        return await upgrade(self.driver)

    async def ping(self) -> None:
        """Raise ``UnavailableError`` unless the database answers."""
        await self.driver.ping()

    async def latest(self, name: str, branch: str) -> VersionRow | None:
        """The highest released version of ``name`` on ``branch`` (an index lookup, never a scan)."""
        return await self.versions.latest(name, branch)

    async def get(self, key: VersionKey) -> VersionRow | None:
        return await self.versions.get(key)

    async def list_versions(
        self, name: str, branch: str | None = None, version_key: str | None = None
    ) -> list[VersionRow]:
        """Versions of ``name``, optionally of one branch and/or one version; highest first."""
        return await self.versions.list_versions(name, branch, version_key)

    async def set_released(self, key: VersionKey, released: bool) -> bool:
        """Release or hold the version under ``key``; False when there is no such version."""
        return await self.versions.set_released(key, released)

    def claim(self, key: VersionKey) -> AbstractAsyncContextManager[Claim]:
        """Lock ``key`` for writing until the block ends (see ``Claim``)."""
        return self.versions.claim(key)

    def object_ids(self) -> AsyncIterator[str]:
        """Every stored row's object id (for recovery and fsck)."""
        return self.versions.object_ids()

    async def __aenter__(self) -> Repository:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

"""The embedded default backend: SQLite through aiosqlite.

WAL mode lets readers run while an upload commits; a claim is ``BEGIN IMMEDIATE``, which serialises
writers across every process sharing the file (each waits up to ``busy_timeout``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import aiosqlite

from otakit.errors import ConflictError, UnavailableError
from otakit.server.repository.base import COLUMNS, Claim, Repository, VersionKey, VersionRow, list_query
from otakit.server.repository.migrations import load_migrations

__all__ = ["SQLiteRepository", "sqlite_path"]

_T = TypeVar("_T")
_BUSY_TIMEOUT_MS = 30_000


def sqlite_path(url: str) -> str:
    """``sqlite:///rel/path.db`` is relative to the working folder, ``sqlite:////abs/path.db`` absolute."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError(f"not a SQLite URL: {url!r} (expected sqlite:///path/to/file.db)")
    return url[len(prefix) :]


def _row(values: sqlite3.Row | tuple[str, ...]) -> VersionRow:
    name, branch, version, version_key, content, object_id = values
    return VersionRow(name, branch, version, version_key, content, object_id)


class _SQLiteClaim(Claim):
    def __init__(self, conn: aiosqlite.Connection, key: VersionKey, existing: VersionRow | None) -> None:
        self._conn = conn
        self.key = key
        self.existing = existing

    async def _put(self, row: VersionRow) -> None:
        try:
            if self.existing is None:
                await self._conn.execute(
                    f"INSERT INTO ota ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    (row.name, row.branch, row.version, row.version_key, row.content, row.object_id),
                )
            else:
                await self._conn.execute(
                    "UPDATE ota SET version = ?, content = ?, object_id = ?,"
                    " updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
                    " WHERE name = ? AND branch = ? AND version_key = ?",
                    (row.version, row.content, row.object_id, row.name, row.branch, row.version_key),
                )
        except sqlite3.IntegrityError as exc:
            if "UNIQUE constraint failed" in str(exc):
                what = f"{row.name} {row.version} on branch {row.branch}"
                raise ConflictError(f"{what} exists already") from exc
            raise


class SQLiteRepository(Repository):
    def __init__(self, url: str) -> None:
        self.path = sqlite_path(url)
        self._reader: aiosqlite.Connection | None = None
        self._writer: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()

    async def _open(self) -> aiosqlite.Connection:
        parent = Path(self.path).parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            conn = await aiosqlite.connect(self.path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise UnavailableError(f"cannot open the SQLite database {self.path}: {exc}") from exc
        await conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = FULL")
        return conn

    async def connect(self) -> None:
        if self._reader is None:
            self._reader = await self._open()
            self._writer = await self._open()

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    def _conns(self) -> tuple[aiosqlite.Connection, aiosqlite.Connection]:
        if self._reader is None or self._writer is None:
            raise UnavailableError("the repository is not connected")
        return self._reader, self._writer

    async def _guard(self, work: Callable[[], Awaitable[_T]]) -> _T:
        try:
            return await work()
        except sqlite3.OperationalError as exc:
            raise UnavailableError(f"SQLite database unavailable: {exc}") from exc

    async def upgrade(self) -> list[str]:
        _, conn = self._conns()
        applied: list[str] = []
        async with self._write_lock:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS otakit_migrations ("
                " number INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                " applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))"
            )
            for migration in load_migrations("sqlite"):
                await conn.execute("BEGIN IMMEDIATE")
                try:
                    async with conn.execute(
                        "SELECT 1 FROM otakit_migrations WHERE number = ?", (migration.number,)
                    ) as cur:
                        done = await cur.fetchone() is not None
                    if not done:
                        for statement in migration.statements:
                            await conn.execute(statement)
                        await conn.execute(
                            "INSERT INTO otakit_migrations (number, name) VALUES (?, ?)",
                            (migration.number, migration.name),
                        )
                        applied.append(migration.name)
                    await conn.execute("COMMIT")
                except BaseException:
                    await conn.execute("ROLLBACK")
                    raise
        return applied

    async def ping(self) -> None:
        reader, _ = self._conns()

        async def work() -> None:
            async with reader.execute("SELECT count(*) FROM otakit_migrations") as cur:
                await cur.fetchone()

        try:
            await self._guard(work)
        except sqlite3.DatabaseError as exc:
            raise UnavailableError(f"SQLite database unavailable: {exc}") from exc

    async def _fetch(self, sql: str, params: tuple[str, ...]) -> list[VersionRow]:
        reader, _ = self._conns()

        async def work() -> list[VersionRow]:
            async with reader.execute(sql, params) as cur:
                return [_row(tuple(r)) for r in await cur.fetchall()]

        return await self._guard(work)

    async def latest(self, name: str, branch: str) -> VersionRow | None:
        rows = await self._fetch(
            f"SELECT {COLUMNS} FROM ota WHERE name = ? AND branch = ? ORDER BY version_key DESC LIMIT 1",
            (name, branch),
        )
        return rows[0] if rows else None

    async def get(self, key: VersionKey) -> VersionRow | None:
        rows = await self._fetch(
            f"SELECT {COLUMNS} FROM ota WHERE name = ? AND branch = ? AND version_key = ?",
            (key.name, key.branch, key.version_key),
        )
        return rows[0] if rows else None

    async def list_versions(
        self, name: str, branch: str | None = None, version_key: str | None = None
    ) -> list[VersionRow]:
        return await self._fetch(*list_query("?", name, branch, version_key))

    @asynccontextmanager
    async def claim(self, key: VersionKey) -> AsyncIterator[Claim]:
        _, writer = self._conns()
        async with self._write_lock:
            await self._guard(lambda: writer.execute("BEGIN IMMEDIATE"))
            try:
                async with writer.execute(
                    f"SELECT {COLUMNS} FROM ota WHERE name = ? AND branch = ? AND version_key = ?",
                    (key.name, key.branch, key.version_key),
                ) as cur:
                    found = await cur.fetchone()
                claim = _SQLiteClaim(writer, key, _row(tuple(found)) if found else None)
                yield claim
                await self._guard(lambda: writer.execute("COMMIT"))
            except BaseException:
                if writer.in_transaction:  # also after a failed COMMIT, which leaves it open
                    await asyncio.shield(writer.execute("ROLLBACK"))
                raise

    async def object_ids(self) -> AsyncIterator[str]:
        reader, _ = self._conns()

        async def work() -> list[str]:
            async with reader.execute("SELECT object_id FROM ota") as cur:
                return [r[0] for r in await cur.fetchall()]

        for object_id in await self._guard(work):
            yield object_id

"""The embedded default driver: SQLite through aiosqlite.

Two connections: reads go to one, every write to the other, one writer at a time in this process. WAL
mode lets readers run while a write commits; a transaction is ``BEGIN IMMEDIATE``, which serialises
writers across every process sharing the file (each waits up to ``busy_timeout``), so it is also every
named lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import NoReturn, cast

import aiosqlite

from otakit.errors import ConflictError, UnavailableError
from otakit.server.db.base import Driver, Executed, Lock, Params, Row, Transaction
from otakit.server.db.urls import sqlite_path

__all__ = ["SQLiteDriver"]

_BUSY_TIMEOUT_MS = 30_000
_UNIQUE_ERRORCODES = frozenset({1555, 2067})  # SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_UNIQUE


class SQLiteDriver(Driver):
    dialect = "sqlite"
    now = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"

    def __init__(self, url: str) -> None:
        self.path = sqlite_path(url)
        self.label = f"SQLite database {self.path}"
        self._reader: aiosqlite.Connection | None = None
        self._writer: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"SQLiteDriver({self.path!r})"

    def _failed(self, exc: sqlite3.Error) -> None:
        """Raise the otakit error ``exc`` means, if it means one: locked, I/O, missing tables and a file
        that is not (or no longer) a database are outages; a unique key's refusal is a conflict."""
        if isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError:
            raise UnavailableError(f"SQLite database unavailable: {exc}") from exc  # no path: clients see it
        if isinstance(exc, sqlite3.IntegrityError) and exc.sqlite_errorcode in _UNIQUE_ERRORCODES:
            raise ConflictError(f"the database refused a duplicate: {exc}") from exc

    async def _open(self) -> aiosqlite.Connection:
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = await aiosqlite.connect(self.path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise UnavailableError(f"cannot open the {self.label}: {exc}") from exc
        try:
            await conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            await conn.close()
            raise UnavailableError(f"cannot open the {self.label}: {exc}") from exc
        return conn

    async def connect(self) -> None:
        if self._reader is None:
            reader = await self._open()
            try:
                self._writer = await self._open()
            except BaseException:
                await reader.close()
                raise
            self._reader = reader

    async def close(self) -> None:
        async with self._write_lock:  # a transaction in flight ends first
            reader, writer, self._reader, self._writer = self._reader, self._writer, None, None
            for conn in (reader, writer):
                if conn is not None:
                    await conn.close()

    def _not_connected(self) -> NoReturn:
        raise UnavailableError("the SQLite database is not connected")

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._fetch(self._reader or self._not_connected(), sql, params)

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self._fetch(self._reader or self._not_connected(), sql, params)
        return rows[0] if rows else None

    async def execute(self, sql: str, params: Params = ()) -> Executed:
        async with self._write_lock:
            return await self._execute(self._writer or self._not_connected(), sql, params)

    async def _fetch(self, conn: aiosqlite.Connection, sql: str, params: Params) -> list[Row]:
        try:
            return cast("list[Row]", await conn.execute_fetchall(sql, params))  # one trip to its thread
        except sqlite3.Error as exc:
            self._failed(exc)
            raise

    async def _execute(self, conn: aiosqlite.Connection, sql: str, params: Params) -> Executed:
        try:
            cursor = await conn.execute(sql, params)
        except sqlite3.Error as exc:
            self._failed(exc)
            raise
        return Executed(cursor.rowcount, cursor.lastrowid)

    @asynccontextmanager
    async def transaction(self, lock: Lock | None = None) -> AsyncIterator[Transaction]:
        async with self._write_lock:
            writer = self._writer or self._not_connected()
            await self._execute(writer, "BEGIN IMMEDIATE", ())
            try:
                yield _SQLiteTransaction(self, writer)
                await self._execute(writer, "COMMIT", ())
            except BaseException:
                if writer.in_transaction:  # also after a failed COMMIT, which leaves it open
                    await asyncio.shield(writer.execute("ROLLBACK"))
                raise

    async def create_migrations_table(self, tx: Transaction) -> None:
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS otakit_migrations ("
            " number INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            f" applied_at TEXT NOT NULL DEFAULT ({self.now}))"
        )


class _SQLiteTransaction(Transaction):
    __slots__ = ("_conn", "_driver")

    def __init__(self, driver: SQLiteDriver, conn: aiosqlite.Connection) -> None:
        self._driver = driver
        self._conn = conn

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._driver._fetch(self._conn, sql, params)

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self._driver._fetch(self._conn, sql, params)
        return rows[0] if rows else None

    async def execute(self, sql: str, params: Params = ()) -> Executed:
        return await self._driver._execute(self._conn, sql, params)

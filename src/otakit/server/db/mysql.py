"""The scale-out driver: MySQL or MariaDB through an aiomysql connection pool.

Statements outside a transaction run on autocommit connections. A named lock is ``GET_LOCK``, taken
before the transaction begins: it serialises writers of one name across every process and connection,
without the gap locks that ``SELECT … FOR UPDATE`` on a missing row takes (which deadlock neighbouring
inserts). Named locks are server-wide, so their names include the database's.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

import aiomysql
import pymysql.err
from pymysql.constants import CLIENT

from otakit.errors import ConflictError, UnavailableError
from otakit.server.db.base import Driver, Executed, Lock, Params, Row, Transaction
from otakit.server.db.urls import mysql_params

__all__ = ["MySQLDriver", "pyformat"]

_T = TypeVar("_T")
# Our own sessions are strict (an over-long value is an error, never truncated) and never use
# NO_BACKSLASH_ESCAPES or ANSI_QUOTES, whatever the server's default: the driver quotes parameters
# with backslash escapes. They read committed data: writers that must exclude each other take a named
# lock (or compare-and-set), and REPEATABLE READ's gap locks would only deadlock neighbouring inserts
# (two devices' reports or inventories, whose keys sit side by side in one index).
_SESSION_SETUP = "SET SESSION sql_mode = 'TRADITIONAL'"
# A statement of its own (it joins no SET list), the same on MySQL and MariaDB; run once per connection.
_READ_COMMITTED = "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"
_CONNECT_TIMEOUT_S = 5
_POOL_RECYCLE_S = 3600
_ER_DUP_ENTRY = 1062
_ER_NO_SUCH_TABLE = 1146
# Server errors that mean "not now": refused or lost sessions, access and missing database (a
# misconfigured or half-provisioned server), shutdown, lock timeouts and deadlocks, read-only replicas.
_OUTAGE_ERRNOS = frozenset(
    {1040, 1042, 1043, 1044, 1045, 1049, 1053, 1129, 1130, 1152, 1158, 1159, 1160, 1161, 1205, 1213}
    | {1226, 1290, 1317, 1792, 1836, 1927, 1969, 3024, 4031}
)
_CLIENT_ERRNOS = range(2000, 3000)  # CR_*: cannot connect, server gone away, lost connection, ...
# Errors after which a connection's state is unknown: it is closed, never returned to the pool.
_BROKEN = (pymysql.err.OperationalError, pymysql.err.InterfaceError, OSError, asyncio.CancelledError)
# Quoted text, quoted names and comments (kept as they are), a ``?`` placeholder, or a ``%``.
_TOKENS = re.compile(
    r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|`[^`]*`|--[^\n]*|#[^\n]*|/\*.*?\*/)|(\?)|%""", re.S
)


def _token(match: re.Match[str]) -> str:
    kept, placeholder = match.group(1, 2)
    if kept is not None:
        return kept.replace("%", "%%")
    return "%s" if placeholder else "%%"


@functools.lru_cache(maxsize=512)
def pyformat(sql: str) -> str:
    """``sql`` written with ``?`` placeholders, in the driver's ``%s`` style: a ``?`` in quotes or a
    comment stays, and every ``%`` is doubled, since parameters (``()`` at least) are always passed."""
    return _TOKENS.sub(_token, sql)


def _errno(exc: BaseException) -> int:
    args = exc.args if isinstance(exc, pymysql.err.MySQLError) else ()
    return args[0] if args and isinstance(args[0], int) else 0


def _is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database cannot serve us now (retry later), rather than a bug or bad data.

    pymysql files every server error it does not know as ``OperationalError``, so the number decides.
    """
    errno = _errno(exc)
    if isinstance(exc, pymysql.err.ProgrammingError):
        # Our tables are gone (a dropped or not yet migrated database): the operator's to mend.
        return errno == _ER_NO_SUCH_TABLE
    if isinstance(exc, pymysql.err.OperationalError | pymysql.err.InternalError):
        return errno in _OUTAGE_ERRNOS or _CLIENT_ERRNOS.start <= errno < _CLIENT_ERRNOS.stop
    return isinstance(exc, pymysql.err.InterfaceError | OSError)  # TimeoutError is an OSError


def _detail(exc: BaseException) -> str:
    if exc.args and isinstance(exc.args[0], int) and len(exc.args) > 1:
        detail = f"{exc.args[1]} ({exc.args[0]})"
    else:
        detail = str(exc) or type(exc).__name__
    return " ".join(detail.split())


async def _or_close(conn: Any, cleanup: Callable[[], Awaitable[object]]) -> None:
    """Run ``cleanup`` on ``conn``; if it fails, close ``conn``: the server then rolls back the open
    transaction and drops the session's named locks. Only cancellation propagates, so a failed cleanup
    never hides the outcome it follows."""
    try:
        await cleanup()
    except BaseException as exc:
        conn.close()
        if not isinstance(exc, Exception):
            raise


def _lock_name(*parts: str) -> str:
    # GET_LOCK names are at most 64 characters: 7 + 40.
    return "otakit:" + hashlib.sha1("\0".join(parts).encode(), usedforsecurity=False).hexdigest()


async def _all(cur: Any) -> list[Row]:
    return list(await cur.fetchall())


async def _one(cur: Any) -> Row | None:
    row: Row | None = await cur.fetchone()
    return row


async def _executed(cur: Any) -> Executed:
    return Executed(cur.rowcount, cur.lastrowid or None)


class MySQLDriver(Driver):
    dialect = "mysql"
    now = "CURRENT_TIMESTAMP(6)"

    def __init__(self, url: str) -> None:
        self._params = mysql_params(url)
        self.database: str = self._params["db"]
        self._where = f"{self._params['host']}:{self._params['port']}/{self.database}"
        self.label = f"MySQL database {self._where}"
        self._pool: Any = None

    def __repr__(self) -> str:
        return f"MySQLDriver({self._where!r})"

    def _failed(self, conn: Any, exc: BaseException) -> None:
        """After a call on ``conn`` raised ``exc``: a connection whose call broke off is closed, not
        reused; an outage is an ``UnavailableError``, a duplicate key a ``ConflictError``."""
        if isinstance(exc, _BROKEN):
            conn.close()
        if _is_unavailable(exc):
            raise UnavailableError(f"{self.label} unavailable: {_detail(exc)}") from exc
        if isinstance(exc, pymysql.err.IntegrityError) and _errno(exc) == _ER_DUP_ENTRY:
            raise ConflictError(f"the database refused a duplicate: {_detail(exc)}") from exc

    async def connect(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await aiomysql.create_pool(
                minsize=1,
                maxsize=10,
                pool_recycle=_POOL_RECYCLE_S,
                autocommit=True,
                connect_timeout=_CONNECT_TIMEOUT_S,
                init_command=_SESSION_SETUP,
                client_flag=CLIENT.FOUND_ROWS,  # rowcount is the rows matched, as on SQLite
                **self._params,
            )
        except Exception as exc:
            if _is_unavailable(exc):
                raise UnavailableError(f"{self.label} unavailable: {_detail(exc)}") from exc
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with suppress(OSError, pymysql.err.MySQLError):  # wait_closed() closes what is left
                await pool.clear()  # says goodbye (COM_QUIT) to the idle connections
            pool.close()
            await pool.wait_closed()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        pool = self._pool  # close() may run meanwhile: the connection goes back where it came from
        if pool is None:
            raise UnavailableError(f"{self.label} is not connected")
        try:
            conn = await pool.acquire()
        except Exception as exc:
            if _is_unavailable(exc):
                raise UnavailableError(f"{self.label} unavailable: {_detail(exc)}") from exc
            raise
        try:
            yield conn
        finally:
            if not conn.closed and conn.get_transaction_status():
                conn.close()  # a transaction left open by a failure: the server rolls it back
            broken = conn.closed
            pool.release(conn)  # a closed connection leaves the pool
            if broken:
                # aiomysql wakes a pending wait_closed() only for connections that come back open.
                await pool._wakeup()

    async def _run(self, conn: Any, sql: str, params: Params, result: Callable[[Any], Awaitable[_T]]) -> _T:
        async with conn.cursor() as cur:
            try:
                await cur.execute(pyformat(sql), params)
                return await result(cur)
            except BaseException as exc:
                self._failed(conn, exc)
                raise

    async def _step(self, conn: Any, step: Callable[[], Awaitable[object]]) -> None:
        try:
            await step()
        except BaseException as exc:
            self._failed(conn, exc)
            raise

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._connection() as conn:
            return await self._run(conn, sql, params, _all)

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        async with self._connection() as conn:
            return await self._run(conn, sql, params, _one)

    async def execute(self, sql: str, params: Params = ()) -> Executed:
        async with self._connection() as conn:
            return await self._run(conn, sql, params, _executed)

    @asynccontextmanager
    async def transaction(self, lock: Lock | None = None) -> AsyncIterator[Transaction]:
        async with self._connection() as conn:
            name = None
            if lock is not None:
                name = _lock_name(self.database, *lock.parts)
                if not await self._lock(conn, name, lock.wait_s):
                    raise UnavailableError(lock.busy)
            try:
                if not getattr(conn, "_otakit_read_committed", False):
                    await self._run(conn, _READ_COMMITTED, (), _executed)
                    conn._otakit_read_committed = True
                await self._step(conn, conn.begin)
                try:
                    yield _MySQLTransaction(self, conn)
                except BaseException:
                    if not conn.closed:
                        await _or_close(conn, conn.rollback)
                    raise
                await self._step(conn, conn.commit)
            finally:
                if name is not None:
                    await self._unlock(conn, name)

    async def _lock(self, conn: Any, name: str, wait_s: int) -> bool:
        """Take the named lock for this session; False if another session held it for ``wait_s``."""
        row = await self._run(conn, "SELECT GET_LOCK(?, ?)", (name, wait_s), _one)
        if row is None or row[0] is None:  # the server failed to take it (out of memory, session killed)
            raise UnavailableError(f"{self.label} unavailable: GET_LOCK failed")
        return bool(row[0] == 1)

    async def _unlock(self, conn: Any, name: str) -> None:
        if conn.closed:
            return  # the server dropped the lock with the session

        async def release() -> None:
            async with conn.cursor() as cur:
                await cur.execute("SELECT RELEASE_LOCK(%s)", (name,))
                await cur.fetchone()

        await _or_close(conn, release)

    async def create_migrations_table(self, tx: Transaction) -> None:
        # Checked rather than CREATE TABLE IF NOT EXISTS, whose note aiomysql would raise as a warning.
        exists = await tx.fetch_one(
            "SELECT 1 FROM information_schema.TABLES"
            " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'otakit_migrations'"
        )
        if exists is None:
            await tx.execute(
                "CREATE TABLE otakit_migrations ("
                " number INT NOT NULL PRIMARY KEY, name VARCHAR(255) NOT NULL,"
                f" applied_at TIMESTAMP(6) NOT NULL DEFAULT {self.now}"
                ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
            )


class _MySQLTransaction(Transaction):
    __slots__ = ("_conn", "_driver")

    def __init__(self, driver: MySQLDriver, conn: Any) -> None:
        self._driver = driver
        self._conn = conn

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._driver._run(self._conn, sql, params, _all)

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        return await self._driver._run(self._conn, sql, params, _one)

    async def execute(self, sql: str, params: Params = ()) -> Executed:
        return await self._driver._run(self._conn, sql, params, _executed)

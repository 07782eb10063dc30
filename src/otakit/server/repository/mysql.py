"""The scale-out backend: MySQL or MariaDB through an aiomysql connection pool.

Reads run on autocommit connections. A claim holds a named lock (``GET_LOCK``) for its key and then runs
one transaction: named locks serialise writers of one key across every process and connection, without
the gap locks that ``SELECT … FOR UPDATE`` on a missing row takes (which deadlock neighbouring inserts).
Named locks are server-wide, so their names include the database's.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager, suppress
from typing import Any, NoReturn
from urllib.parse import parse_qs, unquote, urlsplit

import aiomysql
import pymysql.err

from otakit.errors import ConflictError, UnavailableError
from otakit.server.repository.base import COLUMNS, Claim, Repository, VersionKey, VersionRow, list_query
from otakit.server.repository.migrations import load_migrations

__all__ = ["MySQLRepository", "mysql_params"]

_SCHEMES = ("mysql", "mariadb", "mysql+aiomysql")
_SELECT_KEY = f"SELECT {COLUMNS} FROM ota WHERE name = %s AND branch = %s AND version_key = %s"
# Our own sessions are strict (an over-long value is an error, never truncated) and never use
# NO_BACKSLASH_ESCAPES or ANSI_QUOTES, whatever the server's default: the driver quotes parameters
# with backslash escapes.
_SESSION_SETUP = "SET SESSION sql_mode = 'TRADITIONAL'"
_CONNECT_TIMEOUT_S = 5
_CLAIM_LOCK_TIMEOUT_S = 30
_MIGRATION_LOCK_TIMEOUT_S = 60
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


def mysql_params(url: str) -> dict[str, Any]:
    """``aiomysql.connect`` arguments for ``mysql://user:pass@host:3306/db`` (or ``mariadb://``).

    User and password are percent-decoded; ``?unix_socket=/path`` connects through a socket.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in _SCHEMES:
        raise ValueError(f"not a MySQL URL: {_redact(url)!r} (expected mysql://user:pass@host:3306/db)")
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise ValueError(f"the MySQL URL {_redact(url)!r} names no database (mysql://user:pass@host/db)")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - {"unix_socket"}
    if unknown:
        raise ValueError(f"unsupported MySQL URL options: {', '.join(sorted(unknown))}")
    params: dict[str, Any] = {
        "host": parts.hostname or "localhost",
        "port": parts.port or 3306,
        "user": unquote(parts.username) if parts.username else None,  # None: the driver's default
        "password": unquote(parts.password) if parts.password is not None else "",
        "db": database,
        "charset": "utf8mb4",
    }
    if "unix_socket" in query:
        params["unix_socket"] = query["unix_socket"][-1]
    return params


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username or ''}:***@{netloc}").geturl()


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8")
    if not isinstance(value, str):
        raise TypeError(f"expected a text column, got {type(value).__name__}")
    return value


def _row(values: Sequence[Any]) -> VersionRow:
    name, branch, version, version_key, content, object_id = (_text(v) for v in values)
    return VersionRow(name, branch, version, version_key, content, object_id)


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


def _is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database cannot serve us now (retry later), rather than a bug or bad data.

    pymysql files every server error it does not know as ``OperationalError``, so the number decides.
    """
    args = exc.args if isinstance(exc, pymysql.err.MySQLError) else ()
    errno = args[0] if args and isinstance(args[0], int) else 0
    if isinstance(exc, pymysql.err.ProgrammingError):
        # Our tables are gone (a dropped or not yet migrated database): the operator's to mend.
        return errno == _ER_NO_SUCH_TABLE
    if isinstance(exc, pymysql.err.OperationalError | pymysql.err.InternalError):
        return errno in _OUTAGE_ERRNOS or _CLIENT_ERRNOS.start <= errno < _CLIENT_ERRNOS.stop
    return isinstance(exc, pymysql.err.InterfaceError | OSError)  # TimeoutError is an OSError


class _MySQLClaim(Claim):
    def __init__(
        self,
        conn: Any,
        key: VersionKey,
        existing: VersionRow | None,
        errors: Callable[[Any], AbstractContextManager[None]],
    ) -> None:
        self._conn = conn
        self._errors = errors
        self.key = key
        self.existing = existing

    async def _put(self, row: VersionRow) -> None:
        async with self._conn.cursor() as cur:
            try:
                with self._errors(self._conn):
                    if self.existing is None:
                        await cur.execute(
                            f"INSERT INTO ota ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)",
                            (row.name, row.branch, row.version, row.version_key, row.content, row.object_id),
                        )
                    else:
                        await cur.execute(
                            "UPDATE ota SET version = %s, content = %s, object_id = %s"
                            " WHERE name = %s AND branch = %s AND version_key = %s",
                            (row.version, row.content, row.object_id, row.name, row.branch, row.version_key),
                        )
            except pymysql.err.IntegrityError as exc:
                if exc.args and exc.args[0] == _ER_DUP_ENTRY:
                    raise ConflictError(
                        f"{row.name} {row.version} on branch {row.branch} exists already"
                    ) from exc
                raise


class MySQLRepository(Repository):
    def __init__(self, url: str) -> None:
        self._params = mysql_params(url)
        self.database: str = self._params["db"]
        self._where = f"{self._params['host']}:{self._params['port']}/{self.database}"
        self._pool: Any = None

    def __repr__(self) -> str:
        return f"MySQLRepository({self._where!r})"

    def _unavailable(self, exc: BaseException) -> NoReturn:
        if exc.args and isinstance(exc.args[0], int) and len(exc.args) > 1:
            detail = f"{exc.args[1]} ({exc.args[0]})"
        else:
            detail = str(exc) or type(exc).__name__
        detail = " ".join(detail.split())
        raise UnavailableError(f"MySQL database {self._where} unavailable: {detail}") from exc

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
                **self._params,
            )
        except Exception as exc:
            if _is_unavailable(exc):
                self._unavailable(exc)
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
            raise UnavailableError("the repository is not connected")
        try:
            conn = await pool.acquire()
        except Exception as exc:
            if _is_unavailable(exc):
                self._unavailable(exc)
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

    @contextmanager
    def _errors(self, conn: Any) -> Iterator[None]:
        """Around database calls only: a connection whose call broke off is closed, not reused, and
        an outage becomes ``UnavailableError``."""
        try:
            yield
        except BaseException as exc:
            if isinstance(exc, _BROKEN):
                conn.close()
            if _is_unavailable(exc):
                self._unavailable(exc)
            raise

    async def _fetch(self, sql: str, params: Sequence[str] = ()) -> list[tuple[Any, ...]]:
        async with self._connection() as conn, conn.cursor() as cur:
            with self._errors(conn):
                await cur.execute(sql, params)
                rows: list[tuple[Any, ...]] = list(await cur.fetchall())
            return rows

    async def _lock(self, conn: Any, name: str, wait_s: int) -> bool:
        """Take the named lock for this session; False if another session held it for ``wait_s``."""
        async with conn.cursor() as cur:
            with self._errors(conn):
                await cur.execute("SELECT GET_LOCK(%s, %s)", (name, wait_s))
                (got,) = await cur.fetchone()
        if got is None:  # the server failed to take it (out of memory, session killed)
            raise UnavailableError(f"MySQL database {self._where} unavailable: GET_LOCK failed")
        return bool(got == 1)

    async def _unlock(self, conn: Any, name: str) -> None:
        if conn.closed:
            return  # the server dropped the lock with the session

        async def release() -> None:
            async with conn.cursor() as cur:
                await cur.execute("SELECT RELEASE_LOCK(%s)", (name,))
                await cur.fetchone()

        await _or_close(conn, release)

    async def upgrade(self) -> list[str]:
        lock = _lock_name(self.database, "migrations")
        async with self._connection() as conn:
            if not await self._lock(conn, lock, _MIGRATION_LOCK_TIMEOUT_S):
                raise UnavailableError(f"MySQL database {self._where}: another process is migrating it")
            try:
                async with conn.cursor() as cur:
                    with self._errors(conn):
                        return await self._migrate(cur)
            finally:
                await self._unlock(conn, lock)

    async def _migrate(self, cur: Any) -> list[str]:
        # Checked rather than CREATE TABLE IF NOT EXISTS, whose note aiomysql would raise as a warning.
        await cur.execute(
            "SELECT COUNT(*) FROM information_schema.TABLES"
            " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'otakit_migrations'"
        )
        (exists,) = await cur.fetchone()
        if not exists:
            await cur.execute(
                "CREATE TABLE otakit_migrations ("
                " number INT NOT NULL PRIMARY KEY, name VARCHAR(255) NOT NULL,"
                " applied_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)"
                ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
            )
        await cur.execute("SELECT number FROM otakit_migrations")
        done = {number for (number,) in await cur.fetchall()}
        applied: list[str] = []
        for migration in load_migrations("mysql"):
            if migration.number in done:
                continue
            # DDL commits implicitly, so a migration is recorded once all its statements have run.
            for statement in migration.statements:
                await cur.execute(statement)
            await cur.execute(
                "INSERT INTO otakit_migrations (number, name) VALUES (%s, %s)",
                (migration.number, migration.name),
            )
            applied.append(migration.name)
        return applied

    async def ping(self) -> None:
        try:
            await self._fetch("SELECT COUNT(*) FROM otakit_migrations")
        except pymysql.err.ProgrammingError as exc:
            if exc.args and exc.args[0] == _ER_NO_SUCH_TABLE:
                raise UnavailableError(
                    f"MySQL database {self._where} has no otakit tables yet (run `otakit db upgrade`)"
                ) from exc
            raise

    async def latest(self, name: str, branch: str) -> VersionRow | None:
        rows = await self._fetch(
            f"SELECT {COLUMNS} FROM ota WHERE name = %s AND branch = %s ORDER BY version_key DESC LIMIT 1",
            (name, branch),
        )
        return _row(rows[0]) if rows else None

    async def get(self, key: VersionKey) -> VersionRow | None:
        rows = await self._fetch(_SELECT_KEY, (key.name, key.branch, key.version_key))
        return _row(rows[0]) if rows else None

    async def list_versions(
        self, name: str, branch: str | None = None, version_key: str | None = None
    ) -> list[VersionRow]:
        rows = await self._fetch(*list_query("%s", name, branch, version_key))
        return [_row(r) for r in rows]

    @asynccontextmanager
    async def claim(self, key: VersionKey) -> AsyncIterator[Claim]:
        lock = _lock_name(self.database, key.name, key.branch, key.version_key)
        async with self._connection() as conn:
            if not await self._lock(conn, lock, _CLAIM_LOCK_TIMEOUT_S):
                raise UnavailableError(
                    f"{key.name} on branch {key.branch} is being written by another upload; try again"
                )
            try:
                with self._errors(conn):
                    await conn.begin()
                    async with conn.cursor() as cur:
                        # A plain consistent read: the named lock already excludes other writers.
                        await cur.execute(_SELECT_KEY, (key.name, key.branch, key.version_key))
                        found = await cur.fetchone()
                try:
                    yield _MySQLClaim(conn, key, _row(found) if found else None, self._errors)
                except BaseException:
                    if not conn.closed:
                        await _or_close(conn, conn.rollback)
                    raise
                with self._errors(conn):
                    await conn.commit()
            finally:
                await self._unlock(conn, lock)

    async def object_ids(self) -> AsyncIterator[str]:
        for (object_id,) in await self._fetch("SELECT object_id FROM ota"):
            yield str(object_id)

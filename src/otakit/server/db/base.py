"""The driver interface: what every aggregate's queries are written against, once for every database.

Queries use ``?`` placeholders and portable SQL; what differs between databases is a named hook here
(``now``, ``create_migrations_table``), never a second copy of a query. Every method may raise
``UnavailableError`` (the database cannot serve now: retry) and ``ConflictError`` (a unique key refused a
write); other errors are bugs.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["Driver", "Executed", "Lock", "Params", "Queries", "Row", "Transaction"]

Row = tuple[Any, ...]
Params = Sequence[object]


@dataclass(frozen=True, slots=True)
class Executed:
    """What a write did. ``rowcount``: the rows an INSERT added, or an UPDATE or DELETE matched (changed
    or not, on both databases); ``lastrowid``: after an INSERT, the id its auto-increment column got."""

    rowcount: int
    lastrowid: int | None


@dataclass(frozen=True, slots=True)
class Lock:
    """A named lock held across processes from before a transaction begins until after it ends.

    ``parts`` name it within the database (the driver adds the database's own identity); ``busy`` is the
    ``UnavailableError`` sentence when another holder kept it for ``wait_s`` seconds.
    """

    parts: tuple[str, ...]
    busy: str
    wait_s: int = 30


class Queries(abc.ABC):
    """Runs statements: a driver runs each one on its own (autocommitted), a transaction in its own."""

    __slots__ = ()

    @abc.abstractmethod
    async def fetch(self, sql: str, params: Params = ()) -> list[Row]: ...

    @abc.abstractmethod
    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        """The first row, or None. Say ``LIMIT 1`` when more could match."""

    @abc.abstractmethod
    async def execute(self, sql: str, params: Params = ()) -> Executed: ...


class Transaction(Queries):
    """One connection inside one transaction (see ``Driver.transaction``)."""

    __slots__ = ()


class Driver(Queries):
    """One database, by URL. Not connected until ``connect()``."""

    dialect: ClassVar[str]
    """The folder of its migrations (``migrations/<dialect>/``)."""
    now: ClassVar[str]
    """A SQL expression for the current time, as the ``created_at``/``updated_at`` columns hold it."""
    label: str
    """What a message calls it: ``SQLite database var/otakit.db``, ``MySQL database host:3306/otakit``."""

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open connections; creates or changes no tables."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close every connection, once the transactions in flight have ended."""

    @abc.abstractmethod
    def transaction(self, lock: Lock | None = None) -> AbstractAsyncContextManager[Transaction]:
        """One transaction on one connection: committed when the block ends, rolled back by an exception.

        With ``lock``, no two transactions holding a lock of that name run at once, across processes.
        SQLite takes its one database-wide write lock for every transaction (``BEGIN IMMEDIATE``), which
        serialises them all whatever the name; MySQL takes ``GET_LOCK`` for the name. Inside the block,
        write through the transaction only: a write through the driver waits for the transaction's end.
        """

    @abc.abstractmethod
    async def create_migrations_table(self, tx: Transaction) -> None:
        """Create ``otakit_migrations (number, name, applied_at)`` unless it exists."""

    async def ping(self) -> None:
        """Raise ``UnavailableError`` unless the database answers and has been migrated."""
        await self.fetch_one("SELECT COUNT(*) FROM otakit_migrations")

"""The contract every database driver keeps, run against SQLite and MySQL/MariaDB alike.

The aggregates' queries (tests/test_repository_contract.py) rely on exactly this: ``?`` placeholders,
rowcounts, transactions that commit or roll back whole, named locks across processes, and outages
that are ``UnavailableError``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from otakit.errors import ConflictError, UnavailableError
from otakit.server.db import Driver, Lock, open_driver
from otakit.server.db.mysql import pyformat
from tests.databases import MySQLServer

pytestmark = pytest.mark.anyio

TABLE = {
    "sqlite": "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,"
    " n INTEGER NOT NULL, note TEXT NOT NULL DEFAULT '')",
    "mysql": "CREATE TABLE t (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,"
    " name VARCHAR(100) CHARACTER SET ascii COLLATE ascii_bin NOT NULL UNIQUE, n INT NOT NULL,"
    " note VARCHAR(100) NOT NULL DEFAULT '') ENGINE=InnoDB",
}
INSERT = "INSERT INTO t (name, n, note) VALUES (?, ?, ?)"


@pytest.fixture
async def driver(repo_url: str) -> AsyncIterator[Driver]:
    db = open_driver(repo_url)
    await db.connect()
    try:
        await db.execute(TABLE[db.dialect])
        yield db
    finally:
        await db.close()


async def names(db: Driver) -> list[str]:
    return [name for (name,) in await db.fetch("SELECT name FROM t ORDER BY name")]


# --- statements ----------------------------------------------------------------------------------


async def test_execute_reports_rowcount_and_lastrowid(driver: Driver) -> None:
    first = await driver.execute(INSERT, ("a", 1, ""))
    second = await driver.execute(INSERT, ("b", 1, ""))
    assert (first.rowcount, second.rowcount) == (1, 1)
    assert first.lastrowid is not None
    assert second.lastrowid == first.lastrowid + 1
    assert (await driver.execute("UPDATE t SET n = n + 1")).rowcount == 2
    # Rows matched, not rows changed: the same on both databases.
    assert (await driver.execute("UPDATE t SET n = 2 WHERE name = ?", ("a",))).rowcount == 1
    assert (await driver.execute("DELETE FROM t WHERE name = ?", ("nobody",))).rowcount == 0
    assert (await driver.execute("DELETE FROM t WHERE n = ?", (2,))).rowcount == 2


async def test_fetch_and_fetch_one(driver: Driver) -> None:
    assert await driver.fetch("SELECT name, n FROM t") == []
    assert await driver.fetch_one("SELECT name, n FROM t") is None
    for name, n in [("b", 2), ("a", 1), ("c", 3)]:
        await driver.execute(INSERT, (name, n, ""))
    assert await driver.fetch("SELECT name, n FROM t WHERE n >= ? ORDER BY n DESC", (2,)) == [
        ("c", 3),
        ("b", 2),
    ]
    assert await driver.fetch_one("SELECT name, n FROM t ORDER BY n LIMIT 1") == ("a", 1)
    assert await driver.fetch_one("SELECT name FROM t WHERE name = ?", ("A",)) is None  # case-sensitive


async def test_placeholders_are_question_marks_and_text_is_left_alone(driver: Driver) -> None:
    await driver.execute(INSERT, ("a", 1, "50% off? yes"))
    await driver.execute("INSERT INTO t (name, n, note) VALUES ('b', 2, '100% ?')")
    sql = "SELECT '?', name FROM t WHERE note LIKE '50%' AND n = ? /* n? */ -- or %?\n ORDER BY name"
    assert await driver.fetch(sql, (1,)) == [("?", "a")]
    assert await driver.fetch("SELECT note FROM t WHERE note = ?", ("100% ?",)) == [("100% ?",)]


def test_pyformat_translates_only_placeholders() -> None:
    assert pyformat("SELECT a FROM t WHERE a = ? AND b = ?") == "SELECT a FROM t WHERE a = %s AND b = %s"
    assert pyformat("SELECT '?', \"?\", `a?` WHERE x LIKE 'a%' AND y = ?") == (
        "SELECT '?', \"?\", `a?` WHERE x LIKE 'a%%' AND y = %s"
    )
    assert (
        pyformat("SELECT 'it\\'s ?', 1 % 2 -- why?\n, ? # and?")
        == "SELECT 'it\\'s ?', 1 %% 2 -- why?\n, %s # and?"
    )


async def test_a_duplicate_key_is_a_conflict(driver: Driver) -> None:
    await driver.execute(INSERT, ("a", 1, ""))
    with pytest.raises(ConflictError):
        await driver.execute(INSERT, ("a", 2, ""))

    async def clash() -> None:
        async with driver.transaction() as tx:
            await tx.execute(INSERT, ("b", 1, ""))
            await tx.execute(INSERT, ("a", 3, ""))

    with pytest.raises(ConflictError):
        await clash()
    assert await driver.fetch("SELECT name, n FROM t") == [("a", 1)]


# --- transactions ----------------------------------------------------------------------------------


async def test_a_transaction_commits_when_its_block_ends(driver: Driver) -> None:
    async with driver.transaction() as tx:
        assert (await tx.execute(INSERT, ("a", 1, ""))).rowcount == 1
        assert await tx.fetch("SELECT name FROM t") == [("a",)]
        assert await tx.fetch_one("SELECT n FROM t WHERE name = ?", ("a",)) == (1,)
        assert await names(driver) == []  # other connections do not see it yet
    assert await names(driver) == ["a"]


async def test_a_transaction_rolls_back_on_exception(driver: Driver) -> None:
    await driver.execute(INSERT, ("kept", 1, ""))

    async def fail() -> None:
        async with driver.transaction(Lock(("t",), "busy")) as tx:
            await tx.execute(INSERT, ("a", 1, ""))
            await tx.execute("UPDATE t SET n = 9")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await fail()
    assert await driver.fetch("SELECT name, n FROM t") == [("kept", 1)]
    # Its connection and its lock are free again.
    async with asyncio.timeout(10), driver.transaction(Lock(("t",), "busy")) as tx:
        await tx.execute(INSERT, ("b", 2, ""))
    assert await names(driver) == ["b", "kept"]


async def _add_one(db: Driver, spans: list[tuple[float, float]], lock: Lock | None) -> None:
    async with db.transaction(lock) as tx:
        start = time.monotonic()
        row = await tx.fetch_one("SELECT n FROM t WHERE name = ?", ("counter",))
        assert row is not None
        await asyncio.sleep(0.2)  # the window in which a missing lock lets the other one in
        await tx.execute("UPDATE t SET n = ? WHERE name = ?", (row[0] + 1, "counter"))
        spans.append((start, time.monotonic()))


async def test_a_named_lock_serialises_two_processes(driver: Driver, repo_url: str) -> None:
    await driver.execute(INSERT, ("counter", 0, ""))
    spans: list[tuple[float, float]] = []
    lock = Lock(("counter",), "the counter is busy")
    one, two = open_driver(repo_url), open_driver(repo_url)  # as two server processes would
    await one.connect()
    await two.connect()
    try:
        async with asyncio.timeout(30):
            await asyncio.gather(_add_one(one, spans, lock), _add_one(two, spans, lock))
    finally:
        await one.close()
        await two.close()
    assert await driver.fetch_one("SELECT n FROM t WHERE name = ?", ("counter",)) == (2,)
    first, second = sorted(spans)
    assert first[1] <= second[0], spans


async def test_transactions_in_one_process_serialise_under_a_lock(driver: Driver) -> None:
    await driver.execute(INSERT, ("counter", 0, ""))
    spans: list[tuple[float, float]] = []
    lock = Lock(("counter",), "the counter is busy")
    async with asyncio.timeout(30):
        await asyncio.gather(*(_add_one(driver, spans, lock) for _ in range(3)))
    assert await driver.fetch_one("SELECT n FROM t WHERE name = ?", ("counter",)) == (3,)


@pytest.mark.mysql
async def test_mysql_locks_are_by_name(mysql_server: MySQLServer) -> None:
    mysql_server.reset()
    one, two = open_driver(mysql_server.url), open_driver(mysql_server.url)
    await one.connect()
    await two.connect()
    held = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with one.transaction(Lock(("a",), "a is busy")):
            held.set()
            await release.wait()

    try:
        holder = asyncio.create_task(hold())
        await held.wait()
        async with asyncio.timeout(10), two.transaction(Lock(("b",), "b is busy")):
            pass  # another name does not wait
        with pytest.raises(UnavailableError, match=r"^a is busy$"):
            async with two.transaction(Lock(("a",), "a is busy", wait_s=1)):
                pass
        release.set()
        await holder
        async with asyncio.timeout(10), two.transaction(Lock(("a",), "a is busy", wait_s=1)):
            pass
    finally:
        release.set()
        await one.close()
        await two.close()


# --- outages ---------------------------------------------------------------------------------------


def unreachable_url(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("a regular file")
        return f"sqlite:///{blocker}/ota.db"
    return "mysql://otakit:s3cret%2Fpw@127.0.0.1:1/otakit_nowhere"


async def test_an_unreachable_database_is_unavailable(backend: str, tmp_path: Path) -> None:
    db = open_driver(unreachable_url(backend, tmp_path))
    with pytest.raises(UnavailableError) as caught:
        await db.connect()
    for message in (str(caught.value), db.label):
        assert "\n" not in message
        assert "s3cret" not in message
    with pytest.raises(UnavailableError):
        await db.fetch("SELECT 1")
    with pytest.raises(UnavailableError):
        await db.fetch_one("SELECT 1")
    with pytest.raises(UnavailableError):
        await db.execute("DELETE FROM t")
    with pytest.raises(UnavailableError):
        async with db.transaction(Lock(("t",), "busy")):
            pass
    with pytest.raises(UnavailableError):
        await db.ping()
    await db.close()


async def test_missing_tables_are_unavailable(driver: Driver) -> None:
    with pytest.raises(UnavailableError):
        await driver.fetch("SELECT * FROM nowhere")
    with pytest.raises(UnavailableError):
        await driver.execute("DELETE FROM nowhere")

    async def read_nowhere() -> None:
        async with driver.transaction() as tx:
            await tx.execute(INSERT, ("a", 1, ""))
            await tx.fetch_one("SELECT * FROM nowhere")

    with pytest.raises(UnavailableError):
        await read_nowhere()
    with pytest.raises(UnavailableError):
        await driver.ping()  # not migrated
    assert await names(driver) == []  # the failed transaction was rolled back
    await driver.execute(INSERT, ("a", 1, ""))  # and the driver is fine
    assert await names(driver) == ["a"]

"""The one contract every ``Repository`` keeps, run against SQLite and MySQL/MariaDB alike."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from contextlib import closing
from pathlib import Path

import pymysql.cursors
import pytest

from otakit.errors import ConflictError, UnavailableError
from otakit.server.db.migrations import load_migrations
from otakit.server.db.urls import sqlite_path
from otakit.server.repository import Repository, VersionKey, VersionRow, open_repository
from otakit.versions import version_key
from tests.databases import MySQLServer, mysql_connect

pytestmark = pytest.mark.anyio


def make_row(
    name: str,
    version: str,
    branch: str = "master",
    content: str | None = None,
    object_id: str | None = None,
    *,
    released: bool = True,
) -> VersionRow:
    if content is None:
        content = json.dumps({"name": name, "version": version, "branch": branch, "sha256": "ab" * 32})
    object_id = object_id or uuid.uuid4().hex
    return VersionRow(name, branch, version, version_key(version), content, object_id, released)


async def store(repo: Repository, row: VersionRow) -> VersionRow | None:
    """Claim the row's key and put the row; return what the claim found there."""
    async with repo.claim(row.key) as claim:
        found = claim.existing
        await claim.put(row)
    return found


def dialect(url: str) -> str:
    return "sqlite" if url.startswith("sqlite:") else "mysql"


# --- schema -------------------------------------------------------------------------------------


async def test_upgrade_applies_each_migration_once(repo_url: str) -> None:
    expected = [m.name for m in load_migrations(dialect(repo_url))]
    assert expected
    async with open_repository(repo_url) as first:
        with pytest.raises(UnavailableError):
            await first.ping()  # no tables yet
        assert await first.upgrade() == expected
        assert await first.upgrade() == []
        await first.ping()
    async with open_repository(repo_url) as second:  # another process, later
        assert await second.upgrade() == []
        assert await second.list_versions("pkg") == []


async def test_concurrent_upgrades_apply_each_migration_once(repo_url: str) -> None:
    async with open_repository(repo_url) as one, open_repository(repo_url) as two:
        results = await asyncio.wait_for(asyncio.gather(one.upgrade(), two.upgrade()), 30)
    assert sorted(results, key=len) == [[], [m.name for m in load_migrations(dialect(repo_url))]]


# --- reads --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("versions", "highest"),
    [
        (["0.0.9", "0.0.10", "0.0.2"], "0.0.10"),  # not string order, not insertion order
        (["1.0", "1.0rc1"], "1.0"),  # a release beats its pre-releases
        (["1.0rc1", "1.0a2", "1.0b1"], "1.0rc1"),
        (["1.0.post1", "1.0", "1.0rc1"], "1.0.post1"),
        (["2.0.dev1", "1.9.9"], "2.0.dev1"),
        (["1!0.1", "9.9"], "1!0.1"),  # epochs first
    ],
)
async def test_latest_is_the_highest_version(repo: Repository, versions: list[str], highest: str) -> None:
    for version in versions:
        await store(repo, make_row("pkg", version))
    await store(repo, make_row("pkg", "99.0", branch="beta"))
    await store(repo, make_row("pkh", "99.0"))
    latest = await repo.latest("pkg", "master")
    assert latest is not None
    assert latest.version == highest


async def test_latest_of_unknown_package_or_branch_is_none(repo: Repository) -> None:
    assert await repo.latest("pkg", "master") is None
    await store(repo, make_row("pkg", "1.0"))
    assert await repo.latest("pkg", "beta") is None
    assert await repo.latest("other", "master") is None
    assert await repo.latest("pk", "master") is None


async def test_names_and_branches_are_case_sensitive(repo: Repository) -> None:
    await store(repo, make_row("Pkg", "1.0"))
    assert await store(repo, make_row("pkg", "2.0")) is None
    assert await store(repo, make_row("pkg", "3.0", branch="Master")) is None
    upper, lower = await repo.latest("Pkg", "master"), await repo.latest("pkg", "master")
    assert upper is not None
    assert upper.version == "1.0"
    assert lower is not None
    assert lower.version == "2.0"
    assert await repo.latest("PKG", "master") is None
    assert await repo.get(VersionKey("PKG", "master", version_key("1.0"))) is None
    assert [r.name for r in await repo.list_versions("Pkg")] == ["Pkg"]


async def test_get_by_key(repo: Repository) -> None:
    row = make_row("pkg", "1.2.3")
    await store(repo, make_row("pkg", "1.2.4"))
    await store(repo, row)
    assert await repo.get(row.key) == row
    assert await repo.get(VersionKey("pkg", "master", version_key("1.2.3.0"))) == row
    assert await repo.get(VersionKey("pkg", "beta", row.version_key)) is None
    assert await repo.get(VersionKey("pkg", "master", version_key("1.2"))) is None


async def test_list_versions_filters_and_sorts_highest_first(repo: Repository) -> None:
    for version, branch in [("1.0", "master"), ("2.0", "master"), ("1.5", "master"), ("2.0", "beta")]:
        await store(repo, make_row("pkg", version, branch))
    await store(repo, make_row("pkg", "3.0rc1", "beta"))
    await store(repo, make_row("other", "9.0"))

    def listed(rows: list[VersionRow]) -> list[tuple[str, str]]:
        return [(r.version, r.branch) for r in rows]

    assert listed(await repo.list_versions("pkg")) == [
        ("3.0rc1", "beta"),
        ("2.0", "beta"),
        ("2.0", "master"),
        ("1.5", "master"),
        ("1.0", "master"),
    ]
    assert listed(await repo.list_versions("pkg", branch="master")) == [
        ("2.0", "master"),
        ("1.5", "master"),
        ("1.0", "master"),
    ]
    assert listed(await repo.list_versions("pkg", version_key=version_key("2"))) == [
        ("2.0", "beta"),
        ("2.0", "master"),
    ]
    assert listed(await repo.list_versions("pkg", "beta", version_key("2.0.0"))) == [("2.0", "beta")]
    assert await repo.list_versions("pkg", "gamma") == []
    assert await repo.list_versions("nothing") == []


async def test_content_round_trips_byte_exact(repo: Repository) -> None:
    content = (
        '{"version":"1.0",  "name": "pkg", "描述": "固件更新 😀",\n'
        '"escaped": "\\u00e9\\n", "z": 1.50, "a": [3, 2, 1], "sha256": "AB"}'
    )
    row = make_row("pkg", "1.0", content=content)
    await store(repo, row)
    for found in (await repo.get(row.key), await repo.latest("pkg", "master")):
        assert found is not None
        assert found.content == content
        assert list(found.content_json) == ["version", "name", "描述", "escaped", "z", "a", "sha256"]
    assert (await repo.list_versions("pkg"))[0].content == content


async def test_object_ids_lists_every_row(repo: Repository) -> None:
    assert [i async for i in repo.object_ids()] == []
    rows = [make_row("pkg", "1.0"), make_row("pkg", "1.0", "beta"), make_row("other", "2.0")]
    for row in rows:
        await store(repo, row)
    assert sorted([i async for i in repo.object_ids()]) == sorted(r.object_id for r in rows)
    replacement = make_row("pkg", "1.0.0")
    await store(repo, replacement)
    assert sorted([i async for i in repo.object_ids()]) == sorted(
        [replacement.object_id, rows[1].object_id, rows[2].object_id]
    )


# --- released or held ---------------------------------------------------------------------------


async def test_rows_are_released_unless_stored_held(repo: Repository) -> None:
    released, held = make_row("pkg", "1.0"), make_row("pkg", "2.0", released=False)
    assert released.released is True
    for row in (released, held):
        await store(repo, row)
    assert await repo.get(released.key) == released
    assert await repo.get(held.key) == held
    assert [(r.version, r.released) for r in await repo.list_versions("pkg")] == [
        ("2.0", False),
        ("1.0", True),
    ]


async def test_latest_skips_held_versions(repo: Repository) -> None:
    await store(repo, make_row("pkg", "3.0", released=False))
    assert await repo.latest("pkg", "master") is None  # the only version is held
    await store(repo, make_row("pkg", "1.0"))
    await store(repo, make_row("pkg", "2.0", released=False))
    await store(repo, make_row("pkg", "9.0", branch="beta"))
    latest = await repo.latest("pkg", "master")
    assert latest is not None
    assert (latest.version, latest.released) == ("1.0", True)


async def test_release_makes_it_latest_and_hold_undoes_it(repo: Repository) -> None:
    old, new = make_row("pkg", "1.0"), make_row("pkg", "2.0", released=False)
    for row in (old, new):
        await store(repo, row)
    assert await repo.set_released(new.key, True) is True
    latest = await repo.latest("pkg", "master")
    assert latest is not None
    assert (latest.version, latest.released, latest.object_id) == ("2.0", True, new.object_id)
    assert await repo.set_released(new.key, True) is True  # already released: still found
    assert await repo.set_released(new.key, False) is True
    latest = await repo.latest("pkg", "master")
    assert latest is not None
    assert latest.version == "1.0"
    stored = await repo.get(new.key)
    assert stored is not None
    assert (stored.released, stored.content, stored.object_id) == (False, new.content, new.object_id)
    # Holding the last released version leaves nothing to offer.
    assert await repo.set_released(old.key, False) is True
    assert await repo.latest("pkg", "master") is None


async def test_set_released_of_an_unknown_version_is_false(repo: Repository) -> None:
    await store(repo, make_row("pkg", "1.0"))
    assert await repo.set_released(VersionKey("pkg", "master", version_key("2.0")), True) is False
    assert await repo.set_released(VersionKey("pkg", "beta", version_key("1.0")), False) is False
    assert await repo.set_released(VersionKey("other", "master", version_key("1.0")), False) is False
    assert [r.released for r in await repo.list_versions("pkg")] == [True]


async def test_set_released_matches_equal_versions(repo: Repository) -> None:
    row = make_row("pkg", "1.0")
    await store(repo, row)
    assert await repo.set_released(VersionKey("pkg", "master", version_key("1.0.0")), False) is True
    assert await repo.latest("pkg", "master") is None


async def test_a_replacing_put_stores_its_own_flag(repo: Repository) -> None:
    held = make_row("pkg", "1.0", released=False)
    await store(repo, held)
    replacement = make_row("pkg", "1.0.0")  # a forced re-upload without hold
    assert await store(repo, replacement) == held
    assert await repo.get(held.key) == replacement
    held_again = make_row("pkg", "1.0", released=False)
    assert await store(repo, held_again) == replacement
    assert await repo.get(held.key) == held_again
    assert await repo.latest("pkg", "master") is None


async def test_upgrading_an_existing_database_keeps_its_rows_released(repo_url: str) -> None:
    first, *later = load_migrations(dialect(repo_url))
    assert later, "this test wants a migration after 0001"
    async with open_repository(repo_url) as repository:
        # A database of the release before: only 0001 applied, rows written without the column.
        async with repository.driver.transaction() as tx:
            await repository.driver.create_migrations_table(tx)
            for statement in first.statements:
                await tx.execute(statement)
            await tx.execute(
                "INSERT INTO otakit_migrations (number, name) VALUES (?, ?)", (first.number, first.name)
            )
            for version in ("1.0", "2.0"):
                await tx.execute(
                    "INSERT INTO ota (name, branch, version, version_key, content, object_id)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    ("pkg", "master", version, version_key(version), '{"sha256": "ab"}', uuid.uuid4().hex),
                )
        assert await repository.upgrade() == [m.name for m in later]
        assert [(r.version, r.released) for r in await repository.list_versions("pkg")] == [
            ("2.0", True),
            ("1.0", True),
        ]
        latest = await repository.latest("pkg", "master")
        assert latest is not None
        assert latest.version == "2.0"
        await store(repository, make_row("pkg", "3.0", released=False))
        latest = await repository.latest("pkg", "master")
        assert latest is not None
        assert latest.version == "2.0"


# --- claims -------------------------------------------------------------------------------------


async def test_equal_versions_share_a_key_and_put_replaces(repo: Repository) -> None:
    first = make_row("pkg", "1.0", content='{"sha256": "aa", "n": 1}')
    assert await store(repo, first) is None
    second = make_row("pkg", "1.0.0", content='{"sha256": "bb", "n": 2}')
    assert second.key == first.key
    async with repo.claim(second.key) as claim:
        assert claim.existing == first
        await claim.put(second)
        assert claim.existing == second
    stored = await repo.get(first.key)
    assert stored == second
    assert stored is not None
    assert stored.version == "1.0.0"
    assert stored.object_id != first.object_id
    assert await repo.list_versions("pkg") == [second]


async def test_claim_without_put_changes_nothing(repo: Repository) -> None:
    row = make_row("pkg", "1.0")
    async with repo.claim(row.key) as claim:
        assert claim.existing is None
    assert await repo.get(row.key) is None
    await store(repo, row)
    async with repo.claim(row.key) as claim:
        assert claim.existing == row
    assert await repo.get(row.key) == row


async def put_then_fail(repo: Repository, row: VersionRow) -> None:
    async with repo.claim(row.key) as claim:
        await claim.put(row)
        raise RuntimeError("upload failed")


async def test_claim_rolls_back_on_exception(repo: Repository) -> None:
    row = make_row("pkg", "1.0")
    with pytest.raises(RuntimeError, match="upload failed"):
        await put_then_fail(repo, row)
    assert await repo.get(row.key) is None
    assert await repo.latest("pkg", "master") is None
    assert [i async for i in repo.object_ids()] == []

    await store(repo, row)
    with pytest.raises(RuntimeError, match="upload failed"):
        await put_then_fail(repo, make_row("pkg", "1.0.0"))
    assert await repo.get(row.key) == row
    # The key is free again: the lock went with the failed claim.
    assert await asyncio.wait_for(store(repo, make_row("pkg", "1.0.0")), 10) == row


async def test_duplicate_insert_is_a_conflict(repo: Repository) -> None:
    first = make_row("pkg", "1.0")
    await store(repo, first)
    clash = make_row("pkg", "2.0", object_id=first.object_id)  # object ids are unique too
    with pytest.raises(ConflictError):
        async with repo.claim(clash.key) as claim:
            await claim.put(clash)
    assert await repo.get(clash.key) is None
    assert await repo.list_versions("pkg") == [first]


async def test_a_claim_writes_only_its_own_key(repo: Repository) -> None:
    claimed, other = make_row("pkg", "1.0"), make_row("pkg", "2.0")
    with pytest.raises(ValueError, match="cannot write"):
        async with repo.claim(claimed.key) as claim:
            await claim.put(other)
    assert await repo.list_versions("pkg") == []


async def _claim_once(repo: Repository, row: VersionRow) -> str:
    async with repo.claim(row.key) as claim:
        if claim.existing is not None:
            return "existing"
        await asyncio.sleep(0.1)  # the window a missing lock would let the other claim in
        await claim.put(row)
        await asyncio.sleep(0.1)
        return "inserted"


async def test_concurrent_claims_from_two_processes_serialise(repo: Repository, repo_url: str) -> None:
    one, two = make_row("pkg", "1.0"), make_row("pkg", "1.0.0")
    async with open_repository(repo_url) as server_a, open_repository(repo_url) as server_b:
        outcomes = await asyncio.wait_for(
            asyncio.gather(_claim_once(server_a, one), _claim_once(server_b, two)), 30
        )
    assert sorted(outcomes) == ["existing", "inserted"]
    winner = one if outcomes[0] == "inserted" else two
    assert await repo.list_versions("pkg") == [winner]


async def test_concurrent_claims_in_one_process_serialise(repo: Repository) -> None:
    rows = [make_row("pkg", "1.0"), make_row("pkg", "1.0.0"), make_row("pkg", "1")]
    outcomes = await asyncio.wait_for(asyncio.gather(*(_claim_once(repo, r) for r in rows)), 30)
    assert sorted(outcomes) == ["existing", "existing", "inserted"]
    assert await repo.list_versions("pkg") == [rows[outcomes.index("inserted")]]


# --- availability -------------------------------------------------------------------------------


async def test_ping_when_connected(repo: Repository) -> None:
    await repo.ping()
    await store(repo, make_row("pkg", "1.0"))
    await repo.ping()


async def test_unreachable_database_is_unavailable(backend: str, tmp_path: Path) -> None:
    if backend == "sqlite":
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("a regular file")
        url = f"sqlite:///{blocker}/ota.db"
    else:
        url = "mysql://otakit:s3cret%2Fpw@127.0.0.1:1/otakit_nowhere"
    repository = open_repository(url)
    with pytest.raises(UnavailableError) as caught:
        await repository.connect()
    message = str(caught.value)
    assert "\n" not in message
    assert "s3cret" not in message
    with pytest.raises(UnavailableError):
        await repository.ping()
    with pytest.raises(UnavailableError):
        await repository.latest("pkg", "master")
    await repository.close()


def kill_sessions(server: MySQLServer) -> None:
    """End every session on the test database, as a server restart or a DBA's KILL would."""
    with closing(mysql_connect(server.admin_url, database=False)) as admin, admin.cursor() as cur:
        cur.execute(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND ID <> CONNECTION_ID()",
            (server.database,),
        )
        for (session,) in cur.fetchall():
            cur.execute("KILL %s", (session,))


async def put_after_kill(repo: Repository, row: VersionRow, server: MySQLServer) -> None:
    async with repo.claim(row.key) as claim:
        kill_sessions(server)
        await asyncio.sleep(0.1)
        await claim.put(row)


@pytest.mark.mysql
async def test_mysql_claim_survives_a_killed_connection(mysql_server: MySQLServer) -> None:
    mysql_server.reset()
    repo_url = mysql_server.url
    row = make_row("pkg", "1.0")
    async with open_repository(repo_url) as repo:
        await repo.upgrade()
        with pytest.raises(UnavailableError):
            await put_after_kill(repo, row, mysql_server)
        # The broken connection left the pool, and the server dropped its lock and transaction.
        assert await repo.get(row.key) is None
        assert await asyncio.wait_for(store(repo, row), 10) is None
        assert await repo.get(row.key) == row


@pytest.mark.mysql
async def test_mysql_close_waits_for_claims_in_flight(mysql_server: MySQLServer) -> None:
    mysql_server.reset()
    kept, broken = make_row("pkg", "1.0"), make_row("pkg", "2.0")
    repo = open_repository(mysql_server.url)
    await repo.connect()
    await repo.upgrade()
    started = asyncio.Event()

    async def slow_put(row: VersionRow, kill: bool) -> None:
        async with repo.claim(row.key) as claim:
            started.set()
            await asyncio.sleep(0.3)
            if kill:
                kill_sessions(mysql_server)
                await asyncio.sleep(0.1)
            await claim.put(row)

    for row, kill in [(kept, False), (broken, True)]:
        started.clear()
        task = asyncio.create_task(slow_put(row, kill))
        await started.wait()
        await asyncio.wait_for(repo.close(), 10)  # waits for the claim, even one whose session broke
        assert task.done()
        if kill:
            with pytest.raises(UnavailableError):
                task.result()
        else:
            task.result()
        await repo.connect()
    try:
        assert await repo.list_versions("pkg") == [kept]
    finally:
        await repo.close()


# --- the latest-version lookup is one index step --------------------------------------------------


LATEST_SQL = (
    "SELECT name, branch, version, version_key, content, object_id, released FROM ota"
    " WHERE name = {p} AND branch = {p} AND released = 1 ORDER BY version_key DESC LIMIT 1"
)
LATEST_INDEX = "ota_name_branch_released_version"


async def test_latest_uses_the_index(repo: Repository, repo_url: str) -> None:
    for n in range(5):
        for branch in ("master", "beta"):
            for minor in range(12):
                await store(repo, make_row(f"pkg{n}", f"1.{minor}", branch, released=minor % 3 != 0))
    if dialect(repo_url) == "sqlite":
        with closing(sqlite3.connect(sqlite_path(repo_url))) as conn:
            plan = " | ".join(
                str(r[-1])
                for r in conn.execute("EXPLAIN QUERY PLAN " + LATEST_SQL.format(p="?"), ("pkg3", "master"))
            )
        assert f"USING INDEX {LATEST_INDEX}" in plan, plan
        assert "TEMP B-TREE" not in plan, plan
    else:
        with closing(mysql_connect(repo_url)) as conn, conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute("ANALYZE TABLE ota")
            cur.fetchall()
            cur.execute("EXPLAIN " + LATEST_SQL.format(p="%s"), ("pkg3", "master"))
            (plan,) = cur.fetchall()
        assert plan["key"] == LATEST_INDEX, plan
        assert "filesort" not in (plan["Extra"] or ""), plan
        assert "temporary" not in (plan["Extra"] or ""), plan


async def test_the_change_counter_moves_for_every_process(repo_url: str) -> None:
    """A bump through one repository (one server process) changes the stamp of another once it reads."""
    async with open_repository(repo_url) as first, open_repository(repo_url) as second:
        await first.upgrade()
        await first.changes.refresh()
        await second.changes.refresh()
        before_first, before_second = first.changes.stamp, second.changes.stamp
        start = await first.changes.current()
        await first.changes.bump()
        assert first.changes.stamp != before_first  # its own bump: at once, without a read
        assert second.changes.stamp == before_second  # the other's: not before it reads
        await second.changes.refresh()
        assert second.changes.stamp != before_second
        await second.changes.bump()
        assert await first.changes.current() == start + 2
        assert second.changes.stamp[0] == start + 2

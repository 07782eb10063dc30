"""The users aggregate's contract (operators, sessions, the login throttle, generated secrets), run
against SQLite and MySQL/MariaDB alike."""

from __future__ import annotations

import anyio
import pytest

from otakit.errors import ConflictError
from otakit.server.repository import Repository, open_repository

pytestmark = pytest.mark.anyio


async def test_operators(repo: Repository) -> None:
    users = repo.users
    await users.add("bob", "hash-b", now=2)
    await users.add("alice", "hash-a", now=1)
    with pytest.raises(ConflictError):
        await users.add("alice", "other", now=3)
    assert [(u.name, u.password_hash, u.created) for u in await users.list()] == [
        ("alice", "hash-a", 1),
        ("bob", "hash-b", 2),
    ]
    assert (await users.get("alice")) is not None
    assert await users.get("carol") is None
    assert await users.set_password("alice", "hash-a2")
    assert (await users.get("alice")).password_hash == "hash-a2"  # type: ignore[union-attr]
    assert not await users.set_password("carol", "x")
    assert await users.delete("bob")
    assert not await users.delete("bob")
    assert [u.name for u in await users.list()] == ["alice"]


async def test_sessions_live_until_they_end_or_expire(repo: Repository) -> None:
    users = repo.users
    await users.add("alice", "h", now=0)
    await users.start_session("s1", "alice", now=100, expires=200)
    await users.start_session("s2", "alice", now=100, expires=200)
    assert await users.session_user("s1", now=150) == "alice"
    assert await users.session_user("s1", now=200) is None  # expired
    assert await users.session_user("nope", now=150) is None
    await users.end_session("s1")
    assert await users.session_user("s1", now=150) is None
    assert await users.session_user("s2", now=150) == "alice"  # another browser's session stays


async def test_a_new_password_or_a_deletion_ends_every_session(repo: Repository) -> None:
    users = repo.users
    await users.add("alice", "h", now=0)
    await users.add("bob", "h", now=0)
    await users.start_session("a", "alice", now=1, expires=1000)
    await users.start_session("b", "bob", now=1, expires=1000)
    await users.set_password("alice", "h2")
    assert await users.session_user("a", now=2) is None
    await users.delete("bob")
    assert await users.session_user("b", now=2) is None
    await users.add("bob", "h", now=3)  # a new operator of the old name gets none of the old sessions
    assert await users.session_user("b", now=4) is None


async def test_expired_sessions_are_swept(repo: Repository) -> None:
    users = repo.users
    await users.add("alice", "h", now=0)
    await users.start_session("old", "alice", now=1, expires=10)
    await users.start_session("new", "alice", now=20, expires=100)
    rows = await repo.driver.fetch("SELECT id_hash FROM sessions ORDER BY id_hash")
    assert [row[0] for row in rows] == ["new"]


async def test_failed_logins_count_per_address_within_a_window(repo: Repository) -> None:
    users = repo.users
    for n in range(1, 4):
        assert await users.add_failure("10.0.0.1", now=100 + n, window=60) == n
    assert await users.failures("10.0.0.1", now=150, window=60) == 3
    assert await users.failures("10.0.0.2", now=150, window=60) == 0
    assert await users.failures("10.0.0.1", now=161, window=60) == 0  # the window began at 101
    assert await users.add_failure("10.0.0.1", now=161, window=60) == 1  # and a new one begins
    assert await users.failures("10.0.0.1", now=170, window=60) == 1


async def test_a_secret_is_made_once_and_shared(repo_url: str, repo: Repository) -> None:
    made: list[str] = []

    def generate() -> str:
        made.append(f"secret-{len(made)}")
        return made[-1]

    async with open_repository(repo_url) as other:  # a second server process on the same database
        found: list[str] = []

        async def ask(repository: Repository) -> None:
            found.append(await repository.users.secret("console", generate))

        async with anyio.create_task_group() as tasks:
            for repository in (repo, other, repo, other):
                tasks.start_soon(ask, repository)
    assert len(set(found)) == 1
    assert found[0] in made
    assert await repo.users.secret("console", generate) == found[0]
    assert await repo.users.secret("another", generate) != found[0]

"""The uploads-in-flight and deltas aggregates: one contract, run on SQLite and MariaDB."""

from __future__ import annotations

import uuid

import pytest

from otakit.errors import UnavailableError
from otakit.server.repository import Repository, VersionKey, VersionRow

pytestmark = pytest.mark.anyio


def oid() -> str:
    return uuid.uuid4().hex


async def test_an_upload_entry_lives_from_begin_to_end(repo: Repository) -> None:
    upload = oid()
    await repo.uploads.begin(upload, "host/boot/1/1", 100.0, 50.0)
    [entry] = await repo.uploads.all()
    assert (entry.upload_id, entry.owner, entry.lease_until, entry.name) == (
        upload,
        "host/boot/1/1",
        100.0,
        None,
    )
    await repo.uploads.name(upload, "host/boot/1/1", "pkg", "main", "1.0")
    named = await repo.uploads.get(upload)
    assert named is not None
    assert (named.name, named.branch, named.version) == ("pkg", "main", "1.0")
    with pytest.raises(UnavailableError, match="taken over"):
        await repo.uploads.name(upload, "someone/else/2/2", "pkg", "main", "1.0")
    await repo.uploads.end(upload)
    assert await repo.uploads.all() == []
    assert await repo.uploads.get(upload) is None


async def test_leases_are_renewed_in_batches_and_expire(repo: Repository) -> None:
    mine = [oid() for _ in range(3)]
    theirs = oid()
    for upload in mine:
        await repo.uploads.begin(upload, "me", 10.0, 0.0)
    await repo.uploads.begin(theirs, "them", 10.0, 0.0)
    await repo.uploads.renew([*mine, theirs], "me", 500.0)  # only my own entries move
    assert {e.upload_id for e in await repo.uploads.expired(100.0)} == {theirs}
    assert {e.upload_id for e in await repo.uploads.expired(1000.0)} == {*mine, theirs}


async def test_exactly_one_taker_of_an_expired_entry(repo: Repository) -> None:
    upload = oid()
    await repo.uploads.begin(upload, "dead", 10.0, 0.0)
    [entry] = await repo.uploads.expired(20.0)
    assert not await repo.uploads.take(entry, "a", 100.0, expired_at=5.0)  # not expired at 5
    assert await repo.uploads.take(entry, "a", 100.0, expired_at=20.0)
    assert not await repo.uploads.take(entry, "b", 100.0, expired_at=20.0)  # the owner changed
    taken = await repo.uploads.get(upload)
    assert taken is not None
    assert (taken.owner, taken.lease_until) == ("a", 100.0)
    # A dead owner (known to be dead) is taken at once, whatever its lease.
    other = oid()
    await repo.uploads.begin(other, "gone", 1e12, 0.0)
    gone = await repo.uploads.get(other)
    assert gone is not None
    assert await repo.uploads.take(gone, "c", 100.0, expired_at=None)


async def test_a_fence_holds_only_for_the_owner(repo: Repository) -> None:
    upload = oid()
    await repo.uploads.begin(upload, "me", 10.0, 0.0)
    key = VersionKey("pkg", "main", "k1")
    async with repo.claim(key) as claim:
        await repo.uploads.fence(claim.transaction, upload, "me", 99.0)
    entry = await repo.uploads.get(upload)
    assert entry is not None
    assert entry.lease_until == 99.0
    with pytest.raises(UnavailableError, match="taken over"):
        async with repo.claim(key) as claim:
            await repo.uploads.fence(claim.transaction, upload, "not-me", 99.0)


async def _version(repo: Repository, version: str, object_id: str) -> None:
    key = VersionKey("pkg", "main", version)
    content = f'{{"package":"pkg","branch":"main","version":"{version}","sha256":"{"0" * 64}"}}'
    async with repo.claim(key) as claim:
        await claim.put(VersionRow("pkg", "main", version, version, content, object_id, True, 10, 1.0))


async def test_a_delta_is_claimed_once_and_finished_by_its_maker(repo: Repository) -> None:
    a, b = oid(), oid()
    assert await repo.deltas.claim(a, b, "me", 100.0, 1.0)
    assert not await repo.deltas.claim(a, b, "other", 100.0, 1.0)
    row = await repo.deltas.get(a, b)
    assert row is not None
    assert (row.state, row.owner) == ("making", "me")
    assert not await repo.deltas.take(row, "other", 200.0, now=50.0)  # the lease holds
    assert not await repo.deltas.finish(a, b, "other", object_id=oid(), size=1, sha256="f" * 64)
    delta = oid()
    assert await repo.deltas.finish(a, b, "me", object_id=delta, size=123, sha256="a" * 64)
    ready = await repo.deltas.get(a, b)
    assert ready is not None
    assert (ready.state, ready.object_id, ready.size, ready.sha256, ready.owner) == (
        "ready",
        delta,
        123,
        "a" * 64,
        None,
    )
    assert await repo.deltas.references(delta)
    assert not await repo.deltas.references(a)
    assert await repo.deltas.object_ids() == {delta}


async def test_an_expired_maker_is_taken_over_and_none_is_remembered(repo: Repository) -> None:
    a, b = oid(), oid()
    assert await repo.deltas.claim(a, b, "dead", 10.0, 1.0)
    row = await repo.deltas.get(a, b)
    assert row is not None
    assert await repo.deltas.take(row, "me", 100.0, now=20.0)
    assert not await repo.deltas.take(row, "other", 100.0, now=20.0)
    assert not await repo.deltas.finish(a, b, "dead")  # no longer its own
    assert await repo.deltas.finish(a, b, "me")
    none = await repo.deltas.get(a, b)
    assert none is not None
    assert (none.state, none.object_id) == ("none", None)
    await repo.deltas.drop(a, b)
    assert await repo.deltas.get(a, b) is None


async def test_deltas_between_files_no_version_points_at_are_orphans(repo: Repository) -> None:
    old, new, gone = oid(), oid(), oid()
    await _version(repo, "1", old)
    await _version(repo, "2", new)
    for pair in ((old, new), (old, gone)):
        assert await repo.deltas.claim(*pair, "me", 100.0, 1.0)
        assert await repo.deltas.finish(*pair, "me", object_id=oid(), size=1, sha256="b" * 64)
    assert await repo.deltas.claim(gone, new, "me", 100.0, 1.0)  # still being made: not an orphan yet
    orphans = await repo.deltas.orphaned()
    assert [(row.from_object, row.to_object) for row in orphans] == [(old, gone)]

"""The rollouts aggregate's contract, run against SQLite and MySQL/MariaDB alike."""

from __future__ import annotations

import pytest

from otakit.errors import ConflictError
from otakit.rollout import Policy, Position, Rollout
from otakit.server.repository import Repository

pytestmark = pytest.mark.anyio


def rules(version: str = "2.0", phases: tuple[float, ...] = (10, 50, 100), **policy: object) -> Rollout:
    return Rollout.start("app", "major", version, Policy(phases, **policy))  # type: ignore[arg-type]


async def test_one_active_rollout_per_package_and_branch(repo: Repository) -> None:
    first = await repo.rollouts.create(rules(), now=10)
    assert (first.state, first.phase, first.created, first.phase_started) == ("running", 0, 10, 10)
    with pytest.raises(ConflictError):
        await repo.rollouts.create(rules("3.0"), now=11)
    other_branch = Rollout.start("app", "beta", "3.0", Policy())
    assert (await repo.rollouts.create(other_branch, now=12)).state == "running"
    assert await repo.rollouts.active("app", "major") == first
    ended = await repo.rollouts.apply(first, "abort", now=13)
    assert ended.state == "aborted"
    assert await repo.rollouts.active("app", "major") is None
    assert (await repo.rollouts.create(rules("3.0"), now=14)).version == "3.0"  # the key is free again
    assert [r.version for r in await repo.rollouts.find("app", "major")] == ["3.0", "2.0"]
    assert [r.state for r in await repo.rollouts.find(state="aborted")] == ["aborted"]


async def test_changes_are_compare_and_set(repo: Repository) -> None:
    seen = await repo.rollouts.create(rules(), now=1)
    moved = await repo.rollouts.move(seen, Position("running", 1), reason=None, now=5)
    assert moved is not None
    assert (moved.phase, moved.phase_started, moved.revision) == (1, 5, seen.revision + 1)
    assert await repo.rollouts.move(seen, Position("running", 1), reason=None, now=6) is None  # stale
    with pytest.raises(ConflictError, match="changed meanwhile"):
        await repo.rollouts.apply(seen, "advance", now=7)
    paused = await repo.rollouts.apply(moved, "pause", "operator", now=8)
    assert (paused.state, paused.paused_reason, paused.phase_started) == ("paused", "operator", 5)
    resumed = await repo.rollouts.apply(paused, "resume", now=9)
    assert (resumed.state, resumed.paused_reason, resumed.phase_started) == ("running", None, 9)


async def test_completing_releases_the_version(repo: Repository) -> None:
    from tests.test_repository_contract import make_row, store

    await store(repo, make_row("app", "2.0", "major", released=False))
    assert await repo.latest("app", "major") is None
    row = await repo.rollouts.create(rules(phases=(50, 100)), now=1)
    done = await repo.rollouts.apply(row, "advance", now=2)
    assert done.state == "completed"
    found = await repo.latest("app", "major")
    assert found is not None
    assert found.version == "2.0"


async def test_reports_move_the_counts_and_pause(repo: Repository) -> None:
    row = await repo.rollouts.create(rules(min_reports=2, max_failure_rate=0.4), now=1)

    async def tell(device: str, state: str, version: str = "2.0.0") -> list[int]:
        async with repo.driver.transaction() as tx:
            return await repo.rollouts.count_report(tx, device, "app", version, state, now=2)

    assert await tell("a", "running") == []
    assert await tell("a", "running") == []  # the same outcome again moves nothing
    assert await tell("b", "check") == []  # not an install state
    assert await tell("c", "failed", "9.9") == []  # another version
    now = await repo.rollouts.get(row.id)
    assert now is not None
    assert (now.counts.succeeded, now.counts.failed, now.counts.in_progress) == (0, 0, 1)
    assert await tell("a", "succeeded") == []
    assert await tell("b", "failed") == [row.id]  # 1 / max(2, 2) = 0.5 > 0.4
    now = await repo.rollouts.get(row.id)
    assert now is not None
    assert (now.counts.succeeded, now.counts.failed, now.counts.in_progress) == (1, 1, 0)
    assert now.state == "paused"
    assert now.paused_reason is not None
    assert now.paused_reason.startswith("1 of 2 reported installs failed")
    assert await tell("d", "failed") == []  # counted, but it is paused already
    now = await repo.rollouts.get(row.id)
    assert now is not None
    assert now.counts.failed == 2


async def test_due_rollouts_advance_one_phase(repo: Repository) -> None:
    row = await repo.rollouts.create(rules(phase_seconds=10), now=100)
    await repo.rollouts.create(Rollout.start("app", "beta", "2.0", Policy()), now=100)  # no phase_seconds
    assert await repo.rollouts.advance_due(109) == 0
    assert await repo.rollouts.advance_due(110) == 1
    moved = await repo.rollouts.get(row.id)
    assert moved is not None
    assert (moved.phase, moved.phase_started) == (1, 110)
    assert await repo.rollouts.advance_due(119) == 0  # the new phase has its full time

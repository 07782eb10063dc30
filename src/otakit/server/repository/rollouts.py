"""Staged rollouts: their rows, state changes compare-and-set, and the counts each report moves.

The rules (cohort, transitions, auto-pause) are ``otakit.rollout``'s; this module stores what they
decide. Every state change is an ``UPDATE … WHERE id = ? AND revision = ?``: of two servers or two
operators applying one change, exactly one succeeds and the other sees the rollout as it now is.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from otakit.errors import ConflictError
from otakit.rollout import (
    Action,
    Counts,
    Policy,
    Position,
    Rollout,
    RolloutState,
    classify,
    pause_reason,
    should_pause,
    transition,
)
from otakit.server.db import Driver, Transaction
from otakit.server.db.columns import integer, number, text
from otakit.versions import version_key

__all__ = ["RolloutRow", "Rollouts"]

_COLUMNS = (
    "id, package, branch, version, version_key, phases, phase, state, paused_reason, max_failure_rate,"
    " min_reports, phase_seconds, tags, created, updated, phase_started, succeeded, failed, in_progress,"
    " revision"
)
_ACTIVE = ("running", "paused")


@dataclass(frozen=True, slots=True)
class RolloutRow:
    id: int
    package: str
    branch: str
    version: str
    version_key: str
    policy: Policy
    phase: int
    state: RolloutState
    paused_reason: str | None
    created: float
    updated: float
    phase_started: float
    counts: Counts
    revision: int

    @property
    def rules(self) -> Rollout:
        return Rollout(self.package, self.branch, self.version, self.policy, self.state, self.phase)

    @property
    def active(self) -> bool:
        return self.state in _ACTIVE


def _row(values: Sequence[object]) -> RolloutRow:
    (rid, package, branch, version, key, phases, phase, state, reason, rate, minimum, seconds, tags,
     created, updated, started, succeeded, failed, in_progress, revision) = values  # fmt: skip
    policy = Policy(
        tuple(json.loads(text(phases))),
        number(rate),
        integer(minimum),
        None if seconds is None else number(seconds),
        tuple(json.loads(text(tags))),
    )
    return RolloutRow(
        integer(rid),
        text(package),
        text(branch),
        text(version),
        text(key),
        policy,
        integer(phase),
        _rollout_state(text(state)),
        None if reason is None else text(reason),
        number(created),
        number(updated),
        number(started),
        Counts(integer(succeeded), integer(failed), integer(in_progress)),
        integer(revision),
    )


_STATES: tuple[RolloutState, ...] = ("running", "paused", "completed", "aborted")


def _rollout_state(value: str) -> RolloutState:
    for state in _STATES:
        if value == state:
            return state
    raise ValueError(f"a rollout row in an unknown state {value!r}")


def _active_key(package: str, branch: str, state: str) -> str | None:
    return f"{package}/{branch}" if state in _ACTIVE else None


_RELEASE = "UPDATE ota SET released = 1 WHERE name = ? AND branch = ? AND version_key = ?"


class Rollouts:
    """The rollouts aggregate on one driver. Every method may raise ``UnavailableError``."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    async def create(self, rules: Rollout, *, now: float) -> RolloutRow:
        """Store a new rollout; ``ConflictError`` when its package and branch have an active one. A
        rollout that completes at creation (its only phase is 100) releases its version."""
        policy = rules.policy
        key = version_key(rules.version)
        async with self.driver.transaction() as tx:
            done = await tx.execute(
                "INSERT INTO rollouts (package, branch, version, version_key, phases, phase, state,"
                " max_failure_rate, min_reports, phase_seconds, tags, created, updated, phase_started,"
                " active_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rules.package, rules.branch, rules.version, key, json.dumps(list(policy.phases)),
                    rules.phase, rules.state, policy.max_failure_rate, policy.min_reports,
                    policy.phase_seconds, json.dumps(list(policy.tags)), now, now, now,
                    _active_key(rules.package, rules.branch, rules.state),
                ),
            )  # fmt: skip
            if rules.state == "completed":
                await tx.execute(_RELEASE, (rules.package, rules.branch, key))
        assert done.lastrowid is not None
        found = await self.get(done.lastrowid)
        assert found is not None
        return found

    async def get(self, rollout_id: int) -> RolloutRow | None:
        row = await self.driver.fetch_one(f"SELECT {_COLUMNS} FROM rollouts WHERE id = ?", (rollout_id,))
        return None if row is None else _row(row)

    async def active(self, package: str, branch: str) -> RolloutRow | None:
        """The package and branch's running or paused rollout (one index step)."""
        row = await self.driver.fetch_one(
            f"SELECT {_COLUMNS} FROM rollouts WHERE active_key = ?", (f"{package}/{branch}",)
        )
        return None if row is None else _row(row)

    async def of_version(self, package: str, branch: str, key: str) -> RolloutRow | None:
        """The active rollout of that very version, if any."""
        found = await self.active(package, branch)
        return found if found is not None and found.version_key == key else None

    async def find(
        self, package: str | None = None, branch: str | None = None, state: str | None = None
    ) -> list[RolloutRow]:
        """Rollouts, newest first."""
        where, params = [], []
        for column, value in (("package", package), ("branch", branch), ("state", state)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = f"SELECT {_COLUMNS} FROM rollouts" + (" WHERE " + " AND ".join(where) if where else "")
        return [_row(row) for row in await self.driver.fetch(sql + " ORDER BY id DESC LIMIT 1000", params)]

    async def move(
        self, seen: RolloutRow, to: Position, *, reason: str | None, now: float
    ) -> RolloutRow | None:
        """Store ``to`` if the rollout is still as ``seen`` (its revision); None when another change came
        first. Entering ``completed`` releases the version in the same transaction."""
        new_phase = to.phase != seen.phase or (seen.state == "paused" and to.state == "running")
        async with self.driver.transaction() as tx:
            done = await tx.execute(
                "UPDATE rollouts SET state = ?, phase = ?, paused_reason = ?, updated = ?,"
                " phase_started = ?, revision = revision + 1, active_key = ? WHERE id = ? AND revision = ?",
                (
                    to.state, to.phase, reason, now, now if new_phase else seen.phase_started,
                    _active_key(seen.package, seen.branch, to.state), seen.id, seen.revision,
                ),
            )  # fmt: skip
            if done.rowcount == 0:
                return None
            if to.state == "completed":
                await tx.execute(_RELEASE, (seen.package, seen.branch, seen.version_key))
        return await self.get(seen.id)

    async def apply(
        self, row: RolloutRow, action: Action, reason: str | None = None, *, now: float
    ) -> RolloutRow:
        """Apply ``action`` to the rollout as ``row`` saw it, compare-and-set; ConflictError (409) when its
        state does not allow it, or when another writer changed it first (so that two operators or two
        servers never advance it twice). The caller ends the cached ``/latestVersion`` answers."""
        to = transition(row.state, action, row.phase, row.policy.phases)
        moved = await self.move(row, to, reason=reason if to.state == "paused" else None, now=now)
        if moved is None:
            raise ConflictError(
                f"rollout {row.id} changed meanwhile (another operator or server); look again"
            )
        return moved

    async def advance_due(self, now: float) -> int:
        """Advance each running rollout whose phase is ``phase_seconds`` old, one phase; how many moved."""
        moved = 0
        for row in await self.due(now):
            with contextlib.suppress(ConflictError):  # another process advanced it first
                await self.apply(row, "advance", now=now)
                moved += 1
        return moved

    async def due(self, now: float) -> list[RolloutRow]:
        """Running rollouts with ``phase_seconds`` whose phase is that old: to advance by themselves."""
        rows = await self.driver.fetch(
            f"SELECT {_COLUMNS} FROM rollouts WHERE state = 'running' AND phase_seconds IS NOT NULL"
            " AND phase_started + phase_seconds <= ?",
            (now,),
        )
        return [_row(row) for row in rows]

    async def count_report(
        self,
        tx: Transaction,
        device_id: str,
        package: str | None,
        to_version: str | None,
        state: str,
        now: float,
    ) -> list[int]:
        """Inside a report's transaction: move the counts of each active rollout of the reported version
        by this device's new outcome, and pause a running one the rule says to pause. Returns the ids
        of the rollouts this report paused."""
        outcome = classify(state)
        if package is None or to_version is None or outcome is None:
            return []
        paused = []
        rows = await tx.fetch(
            "SELECT id FROM rollouts WHERE package = ? AND version_key = ? AND active_key IS NOT NULL",
            (package, version_key(to_version)),
        )
        for (rollout_id,) in rows:
            old = await tx.fetch_one(
                "SELECT outcome FROM rollout_devices WHERE rollout_id = ? AND device_id = ?",
                (rollout_id, device_id),
            )
            before = None if old is None else text(old[0])
            if before == outcome:
                continue
            if before is None:
                await tx.execute(
                    "INSERT INTO rollout_devices (rollout_id, device_id, outcome) VALUES (?, ?, ?)",
                    (rollout_id, device_id, outcome),
                )
            else:
                await tx.execute(
                    "UPDATE rollout_devices SET outcome = ? WHERE rollout_id = ? AND device_id = ?",
                    (outcome, rollout_id, device_id),
                )
            delta = {
                name: int(name == outcome) - int(name == before)
                for name in ("succeeded", "failed", "in_progress")
            }
            await tx.execute(
                "UPDATE rollouts SET succeeded = succeeded + ?, failed = failed + ?,"
                " in_progress = in_progress + ?, updated = ? WHERE id = ?",
                (delta["succeeded"], delta["failed"], delta["in_progress"], now, rollout_id),
            )
            now_row = await tx.fetch_one(f"SELECT {_COLUMNS} FROM rollouts WHERE id = ?", (rollout_id,))
            assert now_row is not None
            current = _row(now_row)
            rate, minimum = current.policy.max_failure_rate, current.policy.min_reports
            if current.state == "running" and should_pause(current.counts, rate, minimum):
                await tx.execute(
                    "UPDATE rollouts SET state = 'paused', paused_reason = ?, revision = revision + 1"
                    " WHERE id = ? AND state = 'running'",
                    (pause_reason(current.counts, rate, minimum), rollout_id),
                )
                paused.append(current.id)
        return paused

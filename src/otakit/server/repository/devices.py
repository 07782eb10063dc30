"""The fleet's devices, their inventories and their job reports: every query written once for every driver.

Times are Unix seconds given by the caller (the server's clock), so the rules stay testable. A device's
token is never stored: only its sha256, looked up by a unique index.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from otakit.protocol import DeviceUpdate, JobReport, PackageRef
from otakit.rollout import Device
from otakit.server.db import Driver, Lock, Params, Transaction
from otakit.server.db.columns import integer, number, text
from otakit.server.repository import device_totals as totals
from otakit.versions import version_key

__all__ = ["DeviceFilter", "DeviceRow", "Devices"]

_COLUMNS = "d.id, d.description, d.tags, d.attributes, d.state, d.pinned, d.registered, d.last_seen"
_LAST_REPORTS = 50


@dataclass(frozen=True, slots=True)
class DeviceRow:
    id: str
    description: str
    tags: list[str]
    attributes: dict[str, str]
    state: str  # accepted or pending
    pinned: bool
    registered: float
    last_seen: float
    packages: list[dict[str, str]] = field(default_factory=list)  # {"package", "branch", "version"}
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # package -> its latest report


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    """``GET /api/v1/devices``'s filters; ``seen_after``: online (last seen at or after it) when
    ``online`` is True, offline when False; ``search``: the id starts with it or the description
    contains it, either case (the text is matched literally: ``%`` and ``_`` are no wildcards)."""

    package: str | None = None
    branch: str | None = None
    version: str | None = None
    tag: str | None = None
    state: str | None = None
    online: bool | None = None
    seen_after: float = 0.0
    search: str | None = None

    def sql(self) -> tuple[str, list[object], str]:
        """``FROM … WHERE …`` (without the keyset condition), its parameters, and the id column to sort
        and page by: the joined index's own ``device_id`` when there is a join (equal to ``d.id``, but
        in that index's order, so the database walks it instead of sorting every match)."""
        joins: list[str] = []
        where: list[str] = []
        params: list[object] = []
        order = "d.id"
        if self.package is not None or self.branch is not None or self.version is not None:
            on = ["p.device_id = d.id"]
            for column, value in (
                ("package", self.package),
                ("branch", self.branch),
                ("version_key", version_key(self.version) if self.version is not None else None),
            ):
                if value is not None:
                    on.append(f"p.{column} = ?")
                    params.append(value)
            joins.append("JOIN device_packages p ON " + " AND ".join(on))
            order = "p.device_id"
        if self.tag is not None:
            joins.append("JOIN device_tags t ON t.device_id = d.id AND t.tag = ?")
            params.append(self.tag)
            order = "t.device_id" if order == "d.id" else order
        if self.state is not None:
            where.append("d.state = ?")
            params.append(self.state)
        if self.online is not None:
            where.append("d.last_seen >= ?" if self.online else "d.last_seen < ?")
            params.append(self.seen_after)
        if self.search:
            # LOWER on both sides: SQLite's LIKE ignores ASCII case, MariaDB's follows the columns' binary
            # collations. The escape is '!', since MariaDB reads a backslash in a quoted literal as an escape.
            where.append("(LOWER(d.id) LIKE ? ESCAPE '!' OR LOWER(d.description) LIKE ? ESCAPE '!')")
            literal = self.search.lower()
            for char in ("!", "%", "_"):  # matched as themselves, not as wildcards
                literal = literal.replace(char, "!" + char)
            params += [f"{literal}%", f"%{literal}%"]
        sql = "FROM devices d " + " ".join(joins) + (" WHERE " + " AND ".join(where) if where else "")
        return sql, params, order


def _lock(device_id: str) -> Lock:
    return Lock(("device", device_id), f"device {device_id} is busy; try again")


def _device(values: Sequence[object]) -> DeviceRow:
    device_id, description, tags, attributes, state, pinned, registered, last_seen = values
    return DeviceRow(
        text(device_id),
        text(description),
        json.loads(text(tags)),
        json.loads(text(attributes)),
        text(state),
        bool(pinned),
        number(registered),
        number(last_seen),
    )


class Devices:
    """The devices aggregate on one driver. Every method may raise ``UnavailableError``."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    # -- a device's own calls ------------------------------------------------------------------------
    async def register(
        self, device_id: str, about: DeviceUpdate, *, token_hash: str, state: str, now: float
    ) -> DeviceRow:
        """A new device; ``ConflictError`` when the id (or, never in practice, the token) is taken."""
        async with self.driver.transaction(_lock(device_id)) as tx:
            await tx.execute(
                "INSERT INTO devices (id, description, tags, attributes, state, pinned, token_hash,"
                " registered, last_seen) VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?)",
                (
                    device_id,
                    about.description or "",
                    json.dumps(about.tags or []),
                    json.dumps(about.attributes or {}, ensure_ascii=False),
                    state,
                    token_hash,
                    now,
                    now,
                ),
            )
            await self._write_inventory(tx, device_id, about)
            await totals.move(tx, Counter(), await totals.dims_of(tx, device_id))
        found = await self.get(device_id)
        assert found is not None
        return found

    async def by_token(self, token_hash: str) -> str | None:
        """The id of the device whose token has this sha256, or None."""
        row = await self.driver.fetch_one("SELECT id FROM devices WHERE token_hash = ?", (token_hash,))
        return None if row is None else text(row[0])

    async def update(self, device_id: str, about: DeviceUpdate) -> bool:
        """Store what the device said about itself (fields left out stay); False if it is gone."""
        async with self.driver.transaction(_lock(device_id)) as tx:
            # What the kept totals count (tags, packages) is read only when it may change.
            before: Counter[totals.Dim] | None = None
            if about.tags is not None or about.packages is not None:
                before = await totals.dims_of(tx, device_id)
                exists = bool(before)
            else:
                exists = await tx.fetch_one("SELECT id FROM devices WHERE id = ?", (device_id,)) is not None
            if not exists:
                return False
            sets: list[str] = []
            params: list[object] = []
            if about.description is not None:
                sets.append("description = ?")
                params.append(about.description)
            if about.attributes is not None:
                sets.append("attributes = ?")
                params.append(json.dumps(about.attributes, ensure_ascii=False))
            if about.tags is not None:
                sets.append("tags = ?")
                params.append(json.dumps(about.tags))
            if sets:
                await tx.execute(f"UPDATE devices SET {', '.join(sets)} WHERE id = ?", (*params, device_id))
            await self._write_inventory(tx, device_id, about)
            if before is not None:
                await totals.move(tx, before, await totals.dims_of(tx, device_id))
        return True

    async def _write_inventory(self, tx: Transaction, device_id: str, about: DeviceUpdate) -> None:
        if about.tags is not None:
            await tx.execute("DELETE FROM device_tags WHERE device_id = ?", (device_id,))
            for tag in dict.fromkeys(about.tags):
                await tx.execute("INSERT INTO device_tags (device_id, tag) VALUES (?, ?)", (device_id, tag))
        if about.packages is not None:
            await tx.execute("DELETE FROM device_packages WHERE device_id = ?", (device_id,))
            packages: dict[str, PackageRef] = {ref.package: ref for ref in about.packages}
            for ref in packages.values():
                await tx.execute(
                    "INSERT INTO device_packages (device_id, package, branch, version, version_key)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (device_id, ref.package, ref.branch, ref.version, version_key(ref.version)),
                )

    async def touch(self, seen: Mapping[str, float]) -> None:
        """Mark devices seen (a batch of heartbeats); a time never goes backwards."""
        if not seen:
            return
        async with self.driver.transaction() as tx:
            for device_id, at in sorted(seen.items()):
                await tx.execute(
                    "UPDATE devices SET last_seen = ? WHERE id = ? AND last_seen < ?", (at, device_id, at)
                )

    async def add_report(
        self,
        device_id: str,
        report: JobReport,
        *,
        now: float,
        then: Callable[[Transaction], Awaitable[object]] | None = None,
    ) -> int | None:
        """Store a job report; its ``seq``, or None when the same report (job, state, step and progress)
        is stored already, or the device is gone. ``then`` runs inside the same transaction after a new
        report is stored (the rollouts' counts move with it, or not at all)."""
        body = report.model_dump_json()
        to_key = version_key(report.to_version) if report.to_version is not None else None
        async with self.driver.transaction(_lock(device_id)) as tx:
            if await tx.fetch_one("SELECT id FROM devices WHERE id = ?", (device_id,)) is None:
                return None
            same = await tx.fetch_one(
                "SELECT seq FROM reports WHERE device_id = ? AND job_id = ? AND state = ? AND step = ?"
                " AND progress = ?",
                (device_id, report.id, report.state, report.step, report.progress),
            )
            if same is not None:
                return None
            done = await tx.execute(
                "INSERT INTO reports (device_id, job_id, package, state, step, progress, to_key, body,"
                " received) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    device_id,
                    report.id,
                    report.package,
                    report.state,
                    report.step,
                    report.progress,
                    to_key,
                    body,
                    now,
                ),
            )
            seq = done.lastrowid
            assert seq is not None
            if report.package is not None:
                moved = await tx.execute(
                    "UPDATE device_jobs SET report_seq = ? WHERE device_id = ? AND package = ?",
                    (seq, device_id, report.package),
                )
                if moved.rowcount == 0:
                    await tx.execute(
                        "INSERT INTO device_jobs (device_id, package, report_seq) VALUES (?, ?, ?)",
                        (device_id, report.package, seq),
                    )
            if then is not None:
                await then(tx)
        return seq

    async def offer_view(self, device_id: str, package: str) -> Device | None:
        """What ``otakit.rollout.offer`` needs of a device for one package (one query), or None."""
        row = await self.driver.fetch_one(
            "SELECT d.state, d.pinned, d.tags, p.version FROM devices d"
            " LEFT JOIN device_packages p ON p.device_id = d.id AND p.package = ? WHERE d.id = ?",
            (package, device_id),
        )
        if row is None:
            return None
        state, pinned, tags, runs = row
        return Device(
            device_id,
            "pending" if text(state) == "pending" else "accepted",
            bool(pinned),
            frozenset(json.loads(text(tags))),
            None if runs is None else text(runs),
        )

    # -- the operator's ------------------------------------------------------------------------------
    async def get(self, device_id: str) -> DeviceRow | None:
        row = await self.driver.fetch_one(f"SELECT {_COLUMNS} FROM devices d WHERE d.id = ?", (device_id,))
        if row is None:
            return None
        [device] = await self._complete([_device(row)])
        return device

    async def page(
        self, where: DeviceFilter, *, after: str | None, limit: int
    ) -> tuple[list[DeviceRow], str | None, int]:
        """One page sorted by id (keyset: ids above ``after``), the next page's ``after``, the total."""
        base, params, order = where.sql()
        keyset: list[object] = []
        condition = ""
        if after is not None:
            condition = (" AND " if " WHERE " in base else " WHERE ") + f"{order} > ?"
            keyset.append(after)
        rows = await self.driver.fetch(
            f"SELECT {_COLUMNS} {base}{condition} ORDER BY {order} LIMIT ?", (*params, *keyset, limit + 1)
        )
        dim = totals.dim_of(
            package=where.package, branch=where.branch, version=where.version, tag=where.tag,
            state=where.state, online=where.online,
        )  # fmt: skip
        if dim is not None and not where.search:  # no count is kept per search
            total = await totals.count_of(self.driver, dim)
        else:
            total_row = await self.driver.fetch_one(f"SELECT COUNT(*) {base}", params)
            total = integer(total_row[0]) if total_row else 0
        devices = await self._complete([_device(row) for row in rows[:limit]])
        following = devices[-1].id if len(rows) > limit else None
        return devices, following, total

    async def reports(self, device_id: str, limit: int = _LAST_REPORTS) -> list[dict[str, Any]]:
        """The device's last reports, newest first."""
        rows = await self.driver.fetch(
            "SELECT body, received FROM reports WHERE device_id = ? ORDER BY seq DESC LIMIT ?",
            (device_id, limit),
        )
        return [{**json.loads(text(body)), "received": number(at)} for body, at in rows]

    async def recent_failures(self, limit: int = 10) -> list[dict[str, Any]]:
        """The fleet's last failed or rolled-back jobs, newest first, each with its ``device``."""
        rows = await self.driver.fetch(
            "SELECT device_id, body, received FROM reports WHERE state IN ('failed', 'rolled_back')"
            " ORDER BY seq DESC LIMIT ?",
            (limit,),
        )
        return [
            {**json.loads(text(body)), "device": text(device), "received": number(at)}
            for device, body, at in rows
        ]

    async def accept(self, device_id: str) -> bool:
        async with self.driver.transaction(_lock(device_id)) as tx:
            before = await totals.dims_of(tx, device_id)
            done = await tx.execute("UPDATE devices SET state = 'accepted' WHERE id = ?", (device_id,))
            await totals.move(tx, before, await totals.dims_of(tx, device_id))
        return done.rowcount > 0

    async def set_pinned(self, device_id: str, pinned: bool) -> bool:
        done = await self.driver.execute(
            "UPDATE devices SET pinned = ? WHERE id = ?", (int(pinned), device_id)
        )
        return done.rowcount > 0

    async def delete(self, device_id: str) -> bool:
        """Remove the record, inventory, reports and token: the id may enroll again."""
        async with self.driver.transaction(_lock(device_id)) as tx:
            await totals.move(tx, await totals.dims_of(tx, device_id), Counter())
            done = await tx.execute("DELETE FROM devices WHERE id = ?", (device_id,))
            for table in ("device_packages", "device_tags", "device_jobs", "reports"):
                await tx.execute(f"DELETE FROM {table} WHERE device_id = ?", (device_id,))
        return done.rowcount > 0

    async def _complete(self, devices: list[DeviceRow]) -> list[DeviceRow]:
        """Each device with its inventory and the latest report per package (two queries per page)."""
        if not devices:
            return devices
        by_id = {device.id: device for device in devices}
        marks = ", ".join("?" for _ in by_id)
        params: Params = list(by_id)
        for device_id, package, branch, version in await self.driver.fetch(
            f"SELECT device_id, package, branch, version FROM device_packages WHERE device_id IN ({marks})"
            " ORDER BY device_id, package",
            params,
        ):
            by_id[text(device_id)].packages.append(
                {"package": text(package), "branch": text(branch), "version": text(version)}
            )
        for device_id, package, body in await self.driver.fetch(
            "SELECT j.device_id, j.package, r.body FROM device_jobs j JOIN reports r ON r.seq = j.report_seq"
            f" WHERE j.device_id IN ({marks})",
            params,
        ):
            by_id[text(device_id)].jobs[text(package)] = json.loads(text(body))
        return devices

    async def versions_run(self, package: str) -> list[tuple[str, int]]:
        """How many devices run each version of ``package`` (any branch), highest version first: the
        console's chart. One GROUP BY down the index (package, version_key, device_id); equal versions
        written differently (``1.0``, ``1.0.0``) are one, named by the spelling that sorts first."""
        rows = await self.driver.fetch(
            "SELECT MIN(version), COUNT(*) FROM device_packages WHERE package = ?"
            " GROUP BY version_key ORDER BY version_key DESC",
            (package,),
        )
        return [(text(version), integer(count)) for version, count in rows]

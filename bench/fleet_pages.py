"""The operator's pages with a big fleet: do they stay flat from 1,000 to 100,000 devices?

Two databases, each migrated by the server's own migrations, then filled in bulk straight into the
tables of migrations/*/0003_devices.sql and 0004_rollouts.sql (as latest_version.py does for
versions): N devices ``dev-000000`` … (accepted, online, one tag ``line-<i % 10>``), each running
package ``fleet`` on branch ``main`` (even ones 2.0, odd ones 1.0), each with one report of a job to 2.0
(even: succeeded; ``i % 20 == 1``: failed; the rest queued) and its ``device_jobs`` row, and one running
rollout of 2.0 at phases [10, 50, 100] whose counts and ``rollout_devices`` match those reports.
N = 1,000 in one database, 100,000 (``--devices``) in the other; one server on each.

One keep-alive ``httpx.Client`` per server sends ``--requests`` sequential requests of each page to
the small fleet's server, then to the big one's (the order flips each round); the median latency of
each. Pages:

- first: ``GET /api/v1/devices?limit=100``
- filtered: ``GET /api/v1/devices?package=fleet&version=1.0&limit=100`` (half the fleet matches)
- rollout: ``GET /api/v1/rollouts/1`` (with its counts)

Ratio big/small per page, median of rounds (goal <= 1.5 each).

    .venv/bin/python bench/fleet_pages.py [--backend sqlite|mysql] [--devices 100000] [--small 1000]
        [--requests 300] [--rounds 5] [--mysql-url mysql://root@127.0.0.1:3306]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import sqlite3
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from _common import add_backend_options, median, print_table, temp_dir, uvicorn_server, verdict
from _fleet import ADMIN, DEVICES, ROLLOUTS, device_ids, fleet_env
from latest_version import database, latencies, migrate, mysql_admin
from otakit.protocol import JobReport
from otakit.server.db.migrations import load_migrations
from otakit.server.repository import open_repository
from otakit.versions import version_key

PACKAGE, BRANCH, TO = "fleet", "main", "2.0"
PAGES = {
    "first": f"{DEVICES}?limit=100",
    "filtered": f"{DEVICES}?package={PACKAGE}&version=1.0&limit=100",
    "rollout": f"{ROLLOUTS}/1",
}


def outcome(i: int) -> str:
    return "succeeded" if i % 2 == 0 else "failed" if i % 20 == 1 else "queued"


def tables(count: int, now: float) -> dict[str, tuple[Sequence[str], list[tuple[Any, ...]]]]:
    """table -> (columns, rows) for a fleet of ``count`` devices."""
    ids = device_ids(count)
    devices, tags, packages, reports, jobs, rollout_devices = [], [], [], [], [], []
    for i, device in enumerate(ids):
        tag = f"line-{i % 10}"
        token_hash = hashlib.sha256(f"token-{device}".encode()).hexdigest()
        devices.append((device, "", json.dumps([tag]), "{}", "accepted", 0, token_hash, now - 86400, now))
        tags.append((device, tag))
        runs = TO if i % 2 == 0 else "1.0"
        packages.append((device, PACKAGE, BRANCH, runs, version_key(runs)))
        state = outcome(i)
        report = JobReport(
            id=f"job-{i}",
            package=PACKAGE,
            action="update",
            state=state,  # type: ignore[arg-type]
            step="done" if state != "queued" else "",
            from_version="1.0",
            to_version=TO,
            progress=100 if state != "queued" else 0,
            error="hook failed" if state == "failed" else None,
            log=["downloading", "unpacking", "swapping"] if state != "queued" else [],
        )
        seq = i + 1
        reports.append(
            (seq, device, report.id, PACKAGE, state, report.step, report.progress, version_key(TO),
             report.model_dump_json(), now - 3600)
        )  # fmt: skip
        jobs.append((device, PACKAGE, seq))
        rollout_devices.append((1, device, "in_progress" if state == "queued" else state))
    succeeded = sum(outcome(i) == "succeeded" for i in range(count))
    failed = sum(outcome(i) == "failed" for i in range(count))
    rollout = (
        1, PACKAGE, BRANCH, TO, version_key(TO), "[10, 50, 100]", 1, "running", None, 0.5, 20, None, "[]",
        now - 7200, now - 3600, now - 3600, succeeded, failed, count - succeeded - failed, 3,
        f"{PACKAGE}/{BRANCH}",
    )  # fmt: skip
    return {
        "devices": (
            [
                "id",
                "description",
                "tags",
                "attributes",
                "state",
                "pinned",
                "token_hash",
                "registered",
                "last_seen",
            ],
            devices,
        ),
        "device_tags": (["device_id", "tag"], tags),
        "device_packages": (["device_id", "package", "branch", "version", "version_key"], packages),
        "reports": (
            [
                "seq",
                "device_id",
                "job_id",
                "package",
                "state",
                "step",
                "progress",
                "to_key",
                "body",
                "received",
            ],
            reports,
        ),
        "device_jobs": (["device_id", "package", "report_seq"], jobs),
        "rollouts": (
            [
                "id",
                "package",
                "branch",
                "version",
                "version_key",
                "phases",
                "phase",
                "state",
                "paused_reason",
                "max_failure_rate",
                "min_reports",
                "phase_seconds",
                "tags",
                "created",
                "updated",
                "phase_started",
                "succeeded",
                "failed",
                "in_progress",
                "revision",
                "active_key",
            ],
            [rollout],
        ),
        "rollout_devices": (["rollout_id", "device_id", "outcome"], rollout_devices),
    }


def insert(table: str, columns: Sequence[str], mark: str) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"


def fill_sqlite(path: Path, data: dict[str, tuple[Sequence[str], list[tuple[Any, ...]]]]) -> None:
    conn = sqlite3.connect(path)
    try:
        with conn:
            for table, (columns, rows) in data.items():
                conn.executemany(insert(table, columns, "?"), rows)
        conn.execute("ANALYZE")
    finally:
        conn.close()


def fill_mysql(
    admin_url: str, name: str, data: dict[str, tuple[Sequence[str], list[tuple[Any, ...]]]]
) -> None:
    conn = mysql_admin(admin_url)
    try:
        conn.select_db(name)
        conn.autocommit(False)
        with conn.cursor() as cur:
            for table, (columns, rows) in data.items():
                for start in range(0, len(rows), 5000):
                    cur.executemany(insert(table, columns, "%s"), rows[start : start + 5000])
        conn.commit()
        conn.autocommit(True)
        with conn.cursor() as cur:
            for table in data:
                cur.execute(f"ANALYZE TABLE {table}")
                cur.fetchall()
    finally:
        conn.close()


@contextlib.contextmanager
def fleet_database(backend: str, work: Path, mysql_url: str, count: int) -> Iterator[str]:
    work.mkdir()
    with database(backend, work, mysql_url) as (url, name):
        asyncio.run(migrate(url))
        data = tables(count, time.time())
        if name is None:
            fill_sqlite(work / "ota.db", data)
        else:
            fill_mysql(mysql_url, name, data)
        asyncio.run(recount(url))
        yield url


async def recount(url: str) -> None:
    """The kept device totals of the rows just inserted, as migration 0005 fills them."""
    dialect = "sqlite" if url.startswith("sqlite:") else "mysql"
    [totals] = [m for m in load_migrations(dialect) if m.name.endswith("_device_totals")]
    async with open_repository(url) as repo, repo.driver.transaction() as tx:
        await tx.execute("DELETE FROM device_totals")
        for statement in totals.statements[1:]:  # after the CREATE TABLE
            await tx.execute(statement)


def check(client: httpx.Client, count: int) -> None:
    """The pages answer what was inserted."""
    first = client.get(PAGES["first"]).json()
    assert first["total"] == count, first.get("total")
    assert len(first["list"]) == 100
    assert first["list"][0]["jobs"][PACKAGE]["state"] == "succeeded", first["list"][0]
    filtered = client.get(PAGES["filtered"]).json()
    assert filtered["total"] == count // 2, filtered["total"]
    assert all(d["packages"][0]["version"] == "1.0" for d in filtered["list"])
    counts = client.get(PAGES["rollout"]).json()["rollout"]["counts"]
    assert sum(counts.values()) == count, counts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_backend_options(parser)
    parser.add_argument("--devices", type=int, default=100_000, help="devices of the big fleet")
    parser.add_argument("--small", type=int, default=1000, help="devices of the small fleet")
    parser.add_argument(
        "--requests", type=int, default=300, help="sequential requests per page, side and round"
    )
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    with temp_dir("otakit-bench-fleet-pages-") as work:
        print(f"backend {args.backend}: filling {args.small} and {args.devices} devices ...", flush=True)
        started = time.perf_counter()
        with (
            fleet_database(args.backend, work / "small", args.mysql_url, args.small) as small_url,
            fleet_database(args.backend, work / "big", args.mysql_url, args.devices) as big_url,
        ):
            print(f"  done in {time.perf_counter() - started:.1f} s", flush=True)
            with (
                uvicorn_server(work / "small", env=fleet_env(work / "small", small_url)) as small,
                uvicorn_server(work / "big", env=fleet_env(work / "big", big_url)) as big,
                httpx.Client(base_url=small.url, headers=ADMIN, timeout=60) as small_client,
                httpx.Client(base_url=big.url, headers=ADMIN, timeout=60) as big_client,
            ):
                clients = {"small": small_client, "big": big_client}
                check(small_client, args.small)
                check(big_client, args.devices)
                for client in clients.values():  # warm-up
                    for path in PAGES.values():
                        latencies(client, path, 30)
                rows: dict[str, list[list[object]]] = {page: [] for page in PAGES}
                for n in range(args.rounds):
                    order = ["small", "big"] if n % 2 == 0 else ["big", "small"]
                    med: dict[tuple[str, str], float] = {}
                    for side in order:
                        for page, path in PAGES.items():
                            med[side, page] = statistics.median(latencies(clients[side], path, args.requests))
                    for page in PAGES:
                        big_ms, small_ms = med["big", page] * 1e3, med["small", page] * 1e3
                        rows[page].append([n + 1, "/".join(order), small_ms, big_ms, big_ms / small_ms])
                    print(
                        f"  round {n + 1}: "
                        + ", ".join(
                            f"{page} {med['small', page] * 1e3:.2f} -> {med['big', page] * 1e3:.2f} ms"
                            for page in PAGES
                        ),
                        flush=True,
                    )

    print()
    summary: dict[str, object] = {"backend": args.backend}
    for page, path in PAGES.items():
        print(
            f"{page}: GET {path}, backend {args.backend}, {args.requests} sequential keep-alive requests "
            f"per side per round; {args.devices} devices vs {args.small}"
        )
        print_table(["round", "order", "small median ms", "big median ms", "ratio"], rows[page])
        ratio = median([r[4] for r in rows[page]])  # type: ignore[misc]
        print(
            f"ratio big/small (median of rounds): {ratio:.2f}  {verdict(ratio, 1.5, higher_is_better=False)}"
        )
        print()
        summary[f"{page}_ratio"] = round(ratio, 3)
        summary[f"{page}_big_ms"] = round(median([r[3] for r in rows[page]]), 3)  # type: ignore[misc]
        summary[f"{page}_small_ms"] = round(median([r[2] for r in rows[page]]), 3)  # type: ignore[misc]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

"""A fleet simulator: N devices (default 10,000) through a staged rollout that must pause itself.

One server (uvicorn, httptools, one process) on a fresh database; one client process (asyncio +
httpx, ``--concurrency`` requests in flight). Package ``fleet`` on branch ``main``: 1.0 released, 2.0
held (``PUT /upload?hold=1``). The devices enroll (``POST /api/v1/devices/register``, inventory 1.0),
then a rollout of 2.0 starts at phases [5, 30, 100] with ``min_reports`` 20 and ``max_failure_rate``
0.02. For each phase:

1. heartbeats: every device ``POST …/heartbeat`` with an empty body;
2. polls: every device not yet on 2.0 (and not failed on it) asks
   ``/latestVersion?package=fleet&branch=main&device=ID``; who is answered 2.0 must be exactly the
   devices whose bucket is below the phase's percent (at 100 the version is released: everyone);
3. those install: reports ``queued`` then ``running`` (concurrently across devices);
4. then ``succeeded``, or ``failed`` for the devices chosen to fail: 3 % of the fleet, the first by
   ``sha256("fail/" + id)`` among the devices outside the first phase's cohort. While the rollout is
   active these final reports go one at a time, in id order, so the report after which
   ``failed / max(succeeded + failed, min_reports) > max_failure_rate`` first holds is known: the
   rollout must be paused with exactly that report's figures in ``paused_reason`` (and not before: the
   rule is checked for every earlier report of the sequence). Its counts must equal what was sent;
5. devices that installed say so in a heartbeat (``packages``: 2.0);
6. the script (the operator) advances the rollout by the API; a paused one is resumed first. Entering
   100 completes it and releases 2.0; its counts stay what they were.

The server's CPU seconds (``/proc/<pid>/stat``, all threads) are taken around each stage, so each
stage's figure is only its own kind of request: heartbeat stages include 2.2 s after the last one, for
the batched ``last_seen`` write. A device that failed does not try 2.0 again.

    .venv/bin/python bench/fleet.py [--backend sqlite|mysql] [--devices 10000] [--concurrency 32]
        [--mysql-url mysql://root@127.0.0.1:3306]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any

from _common import add_backend_options, print_table, process_cpu_s, temp_dir, uvicorn_server
from _fleet import (
    ADMIN,
    DEVICES,
    ROLLOUTS,
    async_client,
    device_ids,
    devices_total,
    enroll,
    fleet_env,
    publish,
    run_all,
)
from latest_version import database
from otakit.rollout import Counts, bucket, pause_reason, should_pause

PACKAGE, BRANCH, OLD, NEW = "fleet", "main", "1.0", "2.0"
PHASES = [5, 30, 100]
MIN_REPORTS, MAX_FAILURE_RATE, FAIL_SHARE = 20, 0.02, 0.03


@dataclass
class Stage:
    name: str
    kind: str  # register, heartbeat, poll, report, inventory
    requests: int
    wall_s: float
    cpu_s: float


@dataclass
class Fleet:
    ids: list[str]
    failing: set[str]
    tokens: dict[str, str] = field(default_factory=dict)
    runs: dict[str, str] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)
    stages: list[Stage] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def choose_failing(ids: Sequence[str], first_percent: float) -> set[str]:
    """3 % of the fleet, outside the first phase's cohort, chosen by a hash of the id."""
    outside = [d for d in ids if bucket(PACKAGE, BRANCH, NEW, d) >= first_percent * 100]
    outside.sort(key=lambda d: hashlib.sha256(f"fail/{d}".encode()).digest())
    return set(outside[: round(FAIL_SHARE * len(ids))])


def report_body(device: str, state: str) -> dict[str, Any]:
    step, progress = {"queued": ("", 0), "running": ("download", 40)}.get(state, ("done", 100))
    body: dict[str, Any] = {
        "id": f"{device}-{NEW}",
        "package": PACKAGE,
        "action": "update",
        "state": state,
        "step": step if state != "failed" else "unpack",
        "from_version": OLD,
        "to_version": NEW,
        "progress": progress,
    }
    if state == "failed":
        body["error"] = "simulated failure"
    return body


async def simulate(url: str, pid: int, fleet: Fleet, concurrency: int) -> dict[str, Any]:
    out: dict[str, Any] = {"phases": []}
    async with async_client(url, concurrency) as client:

        def auth(device: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {fleet.tokens[device]}"}

        async def timed(name: str, kind: str, count: int, run: Awaitable[None]) -> None:
            cpu, start = process_cpu_s(pid), time.perf_counter()
            await run
            wall = time.perf_counter() - start
            fleet.stages.append(Stage(name, kind, count, wall, process_cpu_s(pid) - cpu))
            print(f"  {name}: {count} requests in {wall:.1f} s", flush=True)

        async def post(path: str, device: str, body: dict[str, Any] | None) -> None:
            if body is None:
                response = await client.post(path, headers=auth(device))
            else:
                response = await client.post(path, json=body, headers=auth(device))
            if response.status_code != 200:
                raise RuntimeError(f"POST {path}: {response.status_code} {response.text}")

        async def heartbeat(device: str) -> None:
            await post(f"{DEVICES}/{device}/heartbeat", device, None)

        async def report(device: str, state: str) -> None:
            await post(f"{DEVICES}/{device}/reports", device, report_body(device, state))

        async def rollout(rollout_id: int, action: str = "") -> dict[str, Any]:
            path = f"{ROLLOUTS}/{rollout_id}" + (f"/{action}" if action else "")
            response = await (client.post(path, headers=ADMIN) if action else client.get(path, headers=ADMIN))
            if response.status_code not in (200, 201):
                raise RuntimeError(f"{path}: {response.status_code} {response.text}")
            found: dict[str, Any] = response.json()["rollout"]
            return found

        async def register() -> None:
            fleet.tokens.update(
                await enroll(
                    client,
                    fleet.ids,
                    [{"package": PACKAGE, "branch": BRANCH, "version": OLD}],
                    concurrency=concurrency,
                )
            )

        await timed("register", "register", len(fleet.ids), register())
        fleet.runs = dict.fromkeys(fleet.ids, OLD)
        response = await client.post(
            ROLLOUTS,
            headers=ADMIN,
            json={
                "package": PACKAGE,
                "branch": BRANCH,
                "version": NEW,
                "phases": PHASES,
                "min_reports": MIN_REPORTS,
                "max_failure_rate": MAX_FAILURE_RATE,
            },
        )
        if response.status_code != 201:
            raise RuntimeError(f"POST {ROLLOUTS}: {response.status_code} {response.text}")
        rollout_id = int(response.json()["rollout"]["id"])
        counts = Counts()  # what the reports sent so far add up to, while the rollout is active
        paused_at: tuple[str, Counts] | None = None  # the report after which the rule first held
        active = True

        async def heartbeats() -> None:
            await run_all(fleet.ids, heartbeat, concurrency=concurrency)
            await asyncio.sleep(2.2)  # the server writes last_seen in batches every 2 s

        async def poll(device: str, offered: dict[str, str]) -> None:
            response = await client.get(
                "/latestVersion", params={"package": PACKAGE, "branch": BRANCH, "device": device}
            )
            if response.status_code != 200:
                raise RuntimeError(f"latestVersion for {device}: {response.status_code} {response.text}")
            offered[device] = response.json()["content.json"]["version"]

        def final_state(device: str) -> str:
            return "failed" if device in fleet.failing else "succeeded"

        async def started(device: str) -> None:
            await report(device, "queued")
            await report(device, "running")

        async def finish(device: str) -> None:
            await report(device, final_state(device))

        async def finish_in_order(devices: list[str]) -> None:
            for device in devices:
                await finish(device)

        async def inventory(device: str) -> None:
            body = {"packages": [{"package": PACKAGE, "branch": BRANCH, "version": NEW}]}
            await post(f"{DEVICES}/{device}/heartbeat", device, body)

        for phase, percent in enumerate(PHASES):
            label = f"phase {phase + 1} ({percent} %)"
            await timed(f"{label} heartbeats", "heartbeat", len(fleet.ids), heartbeats())

            pollers = [d for d in fleet.ids if fleet.runs[d] != NEW and d not in fleet.failed]
            offered: dict[str, str] = {}
            polls = run_all(pollers, functools.partial(poll, offered=offered), concurrency=concurrency)
            await timed(f"{label} polls", "poll", len(pollers), polls)
            installing = sorted(d for d in pollers if offered[d] == NEW)
            expected = sorted(
                d for d in pollers if percent == 100 or bucket(PACKAGE, BRANCH, NEW, d) < percent * 100
            )
            if installing != expected:
                fleet.problems.append(
                    f"{label}: {len(installing)} devices offered {NEW}, {len(expected)} expected"
                )

            in_progress = run_all(installing, started, concurrency=concurrency)
            await timed(f"{label} reports queued+running", "report", 2 * len(installing), in_progress)
            if active:
                counts = Counts(counts.succeeded, counts.failed, counts.in_progress + len(installing))
                name = f"{label} reports final, one at a time"
                await timed(name, "report", len(installing), finish_in_order(installing))
                for device in installing:
                    failed = final_state(device) == "failed"
                    counts = Counts(
                        counts.succeeded + (not failed), counts.failed + failed, counts.in_progress - 1
                    )
                    if paused_at is None and should_pause(counts, MAX_FAILURE_RATE, MIN_REPORTS):
                        paused_at = (device, counts)
            else:
                finals = run_all(installing, finish, concurrency=concurrency)
                await timed(f"{label} reports final", "report", len(installing), finals)
            for device in installing:
                if final_state(device) == "failed":
                    fleet.failed.add(device)
                else:
                    fleet.runs[device] = NEW

            seen = await rollout(rollout_id)
            want_state = ("paused" if paused_at else "running") if active else "completed"
            row = {
                "phase": label,
                "offered": len(installing),
                "expected_offered": len(expected),
                "state": seen["state"],
                "expected_state": want_state,
                "counts": seen["counts"],
                "expected_counts": {
                    "succeeded": counts.succeeded,
                    "failed": counts.failed,
                    "in_progress": counts.in_progress,
                },
            }
            out["phases"].append(row)
            if seen["state"] != want_state:
                fleet.problems.append(f"{label}: rollout {seen['state']}, expected {want_state}")
            if seen["counts"] != row["expected_counts"]:
                fleet.problems.append(f"{label}: counts {seen['counts']}, sent {row['expected_counts']}")
            if paused_at is not None and active:
                want_reason = pause_reason(paused_at[1], MAX_FAILURE_RATE, MIN_REPORTS)
                out["pause"] = {
                    "phase": label,
                    "after_report_of": paused_at[0],
                    "counts_then": [paused_at[1].succeeded, paused_at[1].failed],
                    "reason": seen["paused_reason"],
                    "expected_reason": want_reason,
                }
                if seen["paused_reason"] != want_reason:
                    fleet.problems.append(
                        f"paused_reason {seen['paused_reason']!r}, expected {want_reason!r}"
                    )

            winners = [d for d in installing if fleet.runs[d] == NEW]
            inventories = run_all(winners, inventory, concurrency=concurrency)
            await timed(f"{label} heartbeats with the new inventory", "inventory", len(winners), inventories)

            if phase + 1 < len(PHASES):
                if seen["state"] == "paused":
                    await rollout(rollout_id, "resume")
                    print(f"  {label}: paused by the rule ({seen['paused_reason']}); resumed", flush=True)
                moved = await rollout(rollout_id, "advance")
                active = moved["state"] in ("running", "paused")
                print(f"  advanced to {moved['percent']} %: {moved['state']}", flush=True)

        final = await rollout(rollout_id)
        out["final"] = {"state": final["state"], "counts": final["counts"]}
        if out["phases"][-1]["expected_counts"] != final["counts"]:
            fleet.problems.append(f"final counts {final['counts']}")
        if "pause" not in out:
            fleet.problems.append("the rule never held: the rollout never paused")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_backend_options(parser)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    args = parser.parse_args()

    ids = device_ids(args.devices)
    fleet = Fleet(ids, choose_failing(ids, PHASES[0]))
    started = time.perf_counter()
    with (
        temp_dir("otakit-bench-fleet-") as work,
        database(args.backend, work, args.mysql_url) as (url, _),
        uvicorn_server(work, env=fleet_env(work, url)) as server,
    ):
        publish(server.url, PACKAGE, BRANCH, OLD)
        publish(server.url, PACKAGE, BRANCH, NEW, hold=True)
        print(
            f"backend {args.backend}: {args.devices} devices, {len(fleet.failing)} of them fail; rollout "
            f"phases {PHASES}, min_reports {MIN_REPORTS}, max_failure_rate {MAX_FAILURE_RATE}",
            flush=True,
        )
        out = asyncio.run(simulate(server.url, server.pid, fleet, args.concurrency))
        on_new = devices_total(server.url, package=PACKAGE, version=NEW)
        winners = sum(1 for v in fleet.runs.values() if v == NEW)
        if on_new != winners:
            fleet.problems.append(f"{on_new} devices listed on {NEW}, {winners} installed it")
    elapsed = time.perf_counter() - started

    print()
    print(
        f"backend {args.backend}, {args.devices} devices, {args.concurrency} requests in flight: {elapsed:.0f} s"
    )
    print_table(
        ["stage", "requests", "wall s", "server CPU s", "CPU ms/request"],
        [[s.name, s.requests, s.wall_s, s.cpu_s, 1e3 * s.cpu_s / max(s.requests, 1)] for s in fleet.stages],
    )
    per: dict[str, float] = {}
    for kind in ("register", "heartbeat", "poll", "report", "inventory"):
        chosen = [s for s in fleet.stages if s.kind == kind]
        per[kind] = 1e3 * sum(s.cpu_s for s in chosen) / max(sum(s.requests for s in chosen), 1)
    print()
    print(
        "server CPU ms per request: "
        + ", ".join(f"{kind} {value:.2f}" for kind, value in per.items())
        + " (heartbeat: empty body, incl. the batched last_seen writes; inventory: a heartbeat with packages)"
    )
    print()
    print_table(
        ["phase", "offered 2.0", "expected", "state", "expected", "counts (s/f/p)", "sent (s/f/p)"],
        [
            [
                p["phase"],
                p["offered"],
                p["expected_offered"],
                p["state"],
                p["expected_state"],
                "/".join(str(v) for v in p["counts"].values()),
                "/".join(str(v) for v in p["expected_counts"].values()),
            ]
            for p in out["phases"]
        ],
    )
    if "pause" in out:
        pause = out["pause"]
        print(
            f"paused in {pause['phase']} after the final report of {pause['after_report_of']} "
            f"(succeeded {pause['counts_then'][0]}, failed {pause['counts_then'][1]}): {pause['reason']!r}"
            f" {'== expected' if pause['reason'] == pause['expected_reason'] else '!= expected ' + repr(pause['expected_reason'])}"
        )
    print(f"final: {out['final']}; devices listed on {NEW}: {on_new}, installed: {winners}")
    print("checks: " + ("all passed" if not fleet.problems else "FAILED:\n  " + "\n  ".join(fleet.problems)))
    print(
        json.dumps(
            {
                "backend": args.backend,
                "devices": args.devices,
                "seconds": round(elapsed, 1),
                "cpu_ms": {k: round(v, 3) for k, v in per.items()},
                "pause": out.get("pause"),
                "ok": not fleet.problems,
            }
        )
    )
    if fleet.problems:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

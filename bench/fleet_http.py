"""The fleet's hot paths under wrk: heartbeats, and ``/latestVersion`` for identified devices.

One server (uvicorn, httptools, one process) on a fresh database; 2,000 devices enrolled through
``POST /api/v1/devices/register`` (inventory: package ``fleet`` 1.0 on branch ``main``).

(1) ``POST /api/v1/devices/{id}/heartbeat`` with an empty body, a wrk Lua script cycling through the
    devices' ids and tokens, vs ``GET /test`` (constant JSON) of the same server; ratio (goal >= 0.5).
    The server runs with ``OTAKIT_HEARTBEAT_SECONDS=2`` (online = seen within 6 s): the devices are
    let go offline first, and after each heartbeat run (and > 2 s for the batched ``last_seen``
    write) ``GET /api/v1/devices?online=true`` must count all of them.
(2) With 1.0 released and 2.0 held (``PUT /upload?hold=1``) and a rollout of 2.0 at phases
    [10, 50, 100] running: ``/latestVersion?package=fleet&branch=main&device=ID`` cycling through the
    devices vs the anonymous ``/latestVersion?package=fleet&branch=main``; ratio (goal >= 0.7). Every
    device's answer is checked once against its bucket first.

Rounds alternate the two sides (the order flips each round) after a short warm-up of each; the median
of the per-round ratios is quoted. Any non-2xx answer or socket error is an error.

    .venv/bin/python bench/fleet_http.py [--backend sqlite|mysql] [--devices 2000] [--rounds 5]
        [--duration 10] [--threads 2] [--connections 32] [--mysql-url mysql://root@127.0.0.1:3306]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from _common import (
    add_backend_options,
    add_wrk_options,
    median,
    print_table,
    temp_dir,
    uvicorn_server,
    verdict,
    wrk,
)
from _fleet import (
    ADMIN,
    DEVICES,
    ROLLOUTS,
    async_client,
    device_ids,
    devices_total,
    enroll,
    fleet_env,
    lua_cycling,
    publish,
    run_all,
    start_rollout,
)
from latest_version import database
from otakit.rollout import bucket

PACKAGE, BRANCH = "fleet", "main"
HEARTBEAT_LUA = """  return wrk.format("POST", "/api/v1/devices/" .. ids[i] .. "/heartbeat",
    {["Authorization"] = "Bearer " .. tokens[i]}, "")"""
LATEST_LUA = (
    f"""  return wrk.format("GET", "/latestVersion?package={PACKAGE}&branch={BRANCH}&device=" .. ids[i])"""
)


def alternate(
    label: str,
    sides: dict[str, tuple[str, Path | None]],
    subject: str,
    args: argparse.Namespace,
    after: dict[str, Callable[[], None]] | None = None,
) -> list[list[object]]:
    """Rounds of wrk on both sides, alternated; rows: round, order, baseline rps, subject rps, ratio."""
    baseline = next(s for s in sides if s != subject)
    checks = after or {}
    for url, script in sides.values():  # warm-up
        wrk(url, 2, args.threads, args.connections, script)
    rows: list[list[object]] = []
    for n in range(args.rounds):
        order = [baseline, subject] if n % 2 == 0 else [subject, baseline]
        rps: dict[str, float] = {}
        for side in order:
            url, script = sides[side]
            rps[side] = wrk(url, args.duration, args.threads, args.connections, script).rps
            if side in checks:
                checks[side]()
        rows.append([n + 1, "/".join(order), rps[baseline], rps[subject], rps[subject] / rps[baseline]])
        print(
            f"  {label} round {n + 1}: {baseline} {rps[baseline]:.0f} req/s, {subject} {rps[subject]:.0f} req/s",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_backend_options(parser)
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    add_wrk_options(parser)
    args = parser.parse_args()

    ids = device_ids(args.devices)
    with (
        temp_dir("otakit-bench-fleet-http-") as work,
        database(args.backend, work, args.mysql_url) as (url, _),
        uvicorn_server(work, env=fleet_env(work, url, OTAKIT_HEARTBEAT_SECONDS="2")) as server,
    ):
        publish(server.url, PACKAGE, BRANCH, "1.0")
        print(f"backend {args.backend}: enrolling {args.devices} devices ...", flush=True)
        started = time.perf_counter()

        async def enroll_all() -> dict[str, str]:
            async with async_client(server.url) as client:
                return await enroll(client, ids, [{"package": PACKAGE, "branch": BRANCH, "version": "1.0"}])

        tokens = asyncio.run(enroll_all())
        print(f"  done in {time.perf_counter() - started:.1f} s", flush=True)

        # (1) heartbeats: let the devices go offline (6 s), so the online check means something.
        deadline = time.monotonic() + 30
        while devices_total(server.url, online="true") and time.monotonic() < deadline:
            time.sleep(0.5)
        offline_before = args.devices - devices_total(server.url, online="true")
        online_after: list[int] = []

        def check_online() -> None:
            time.sleep(2.5)  # the seen buffer is written every 2 s
            online_after.append(devices_total(server.url, online="true"))

        heartbeat_lua = work / "heartbeat.lua"
        heartbeat_lua.write_text(lua_cycling(ids, HEARTBEAT_LUA, tokens))
        hb_rows = alternate(
            "(1)",
            {"test": (server.url + "/test", None), "heartbeat": (server.url, heartbeat_lua)},
            "heartbeat",
            args,
            after={"heartbeat": check_online},
        )

        # (2) /latestVersion?device= during a running rollout
        publish(server.url, PACKAGE, BRANCH, "2.0", hold=True)
        start_rollout(server.url, PACKAGE, BRANCH, "2.0", phases=[10, 50, 100])
        wrong: list[str] = []
        in_cohort = 0

        async def check_offers() -> None:
            nonlocal in_cohort
            async with async_client(server.url) as client:

                async def one(device: str) -> None:
                    nonlocal in_cohort
                    response = await client.get(
                        "/latestVersion", params={"package": PACKAGE, "branch": BRANCH, "device": device}
                    )
                    got = response.json()["content.json"]["version"]
                    want = "2.0" if bucket(PACKAGE, BRANCH, "2.0", device) < 1000 else "1.0"
                    in_cohort += want == "2.0"
                    if got != want:
                        wrong.append(f"{device}: {got} (expected {want})")

                await run_all(ids, one)

        asyncio.run(check_offers())
        if wrong:
            raise RuntimeError(f"{len(wrong)} devices offered the wrong version: {wrong[:5]}")
        latest_lua = work / "latest.lua"
        latest_lua.write_text(lua_cycling(ids, LATEST_LUA))
        anonymous = f"{server.url}/latestVersion?package={PACKAGE}&branch={BRANCH}"
        lv_rows = alternate(
            "(2)",
            {"anonymous": (anonymous, None), "device": (server.url, latest_lua)},
            "device",
            args,
        )
        still = httpx.get(server.url + ROLLOUTS + "/1", headers=ADMIN)
        assert still.json()["rollout"]["state"] == "running", still.text

    print()
    print(
        f"(1) requests/s under wrk -t{args.threads} -c{args.connections} -d{args.duration}s, backend "
        f"{args.backend}: POST {DEVICES}/{{id}}/heartbeat (empty body, {args.devices} devices cycled) vs GET /test"
    )
    print_table(["round", "order", "/test req/s", "heartbeat req/s", "ratio"], hb_rows)
    ratio_1 = median([r[4] for r in hb_rows])  # type: ignore[misc]
    print(f"ratio heartbeat / test (median of rounds): {ratio_1:.2f}  {verdict(ratio_1, 0.5)}")
    print("non-2xx answers: 0 (any would have stopped the run)")
    print(
        f"online: {offline_before} of {args.devices} offline before the first heartbeat run; after each "
        f"heartbeat run (+2.5 s): {', '.join(map(str, online_after))} online "
        f"({'all' if all(n == args.devices for n in online_after) else 'NOT all'})"
    )
    print()
    print(
        f"(2) requests/s, backend {args.backend}: /latestVersion?device=ID ({args.devices} devices cycled, "
        f"rollout of 2.0 running at 10 %: {in_cohort} of them in its cohort) vs anonymous /latestVersion"
    )
    print_table(["round", "order", "anonymous req/s", "device req/s", "ratio"], lv_rows)
    ratio_2 = median([r[4] for r in lv_rows])  # type: ignore[misc]
    print(f"ratio device/anonymous (median of rounds): {ratio_2:.2f}  {verdict(ratio_2, 0.7)}")
    print(
        json.dumps(
            {
                "backend": args.backend,
                "heartbeat_rps": round(median([r[3] for r in hb_rows]), 1),  # type: ignore[misc]
                "test_rps": round(median([r[2] for r in hb_rows]), 1),  # type: ignore[misc]
                "heartbeat_ratio": round(ratio_1, 3),
                "all_online": all(n == args.devices for n in online_after),
                "device_latest_rps": round(median([r[3] for r in lv_rows]), 1),  # type: ignore[misc]
                "anonymous_latest_rps": round(median([r[2] for r in lv_rows]), 1),  # type: ignore[misc]
                "latest_ratio": round(ratio_2, 3),
            }
        )
    )


if __name__ == "__main__":
    main()

"""``GET /latestVersion``: does it stay flat with many versions, and what does it cost per request?

One database holds two packages on branch ``main``: ``big`` with 100,000 versions (inserted in random
order, bulk ``executemany`` after the migrations ran) and ``small`` with one.

(a) Latency: one keep-alive ``httpx.Client`` sends N sequential requests for ``big``, then N for
    ``small`` (the order alternates each round); the median latency of each; ratio big/small
    (goal <= 1.2: the highest version is an index step, not a scan).
(b) Throughput: ``wrk -t2 -c32 -d10s`` against ``/latestVersion?package=big`` vs a bare FastAPI
    route returning constant JSON (bench/bare_app.py) on the same kind of server (uvicorn, httptools,
    one process), alternated; ratio otakit/bare (goal >= 0.7 SQLite, >= 0.5 MariaDB).

    .venv/bin/python bench/latest_version.py [--backend sqlite|mysql] [--versions 100000]
        [--requests 1000] [--rounds 5] [--duration 10] [--mysql-url mysql://root@127.0.0.1:3306]

MySQL: a database ``otakit_bench_<hex>`` is created on the server of ``--mysql-url`` and dropped at
the end; nothing else there is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sqlite3
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from _common import (
    add_backend_options,
    add_wrk_options,
    content_json,
    median,
    otakit_env,
    print_table,
    temp_dir,
    uvicorn_server,
    verdict,
    wrk,
)
from otakit.server.repository import open_repository
from otakit.versions import version_key

BRANCH = "main"


def versions(count: int) -> list[str]:
    """``count`` distinct versions: 0.0.0, 0.0.1, ..., in random order."""
    out = [f"{i // 10000}.{(i // 100) % 100}.{i % 100}" for i in range(count)]
    random.Random(42).shuffle(out)
    return out


def rows_for(package: str, vers: list[str]) -> Iterator[tuple[str, str, str, str, str, str]]:
    for v in vers:
        sha = uuid.uuid4().hex + uuid.uuid4().hex
        yield (package, BRANCH, v, version_key(v), content_json(package, BRANCH, v, sha), uuid.uuid4().hex)


async def migrate(url: str) -> None:
    repo = open_repository(url)
    await repo.connect()
    try:
        await repo.upgrade()
    finally:
        await repo.close()


INSERT = "INSERT INTO ota (name, branch, version, version_key, content, object_id) VALUES ({})"


def fill_sqlite(path: Path, rows: list[tuple[str, ...]]) -> None:
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.executemany(INSERT.format(", ".join("?" * 6)), rows)
        conn.execute("ANALYZE")
    finally:
        conn.close()


def mysql_admin(url: str):  # type: ignore[no-untyped-def]
    import pymysql

    parts = urlsplit(url)
    return pymysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
        connect_timeout=5,
        autocommit=True,
    )


def fill_mysql(admin_url: str, database: str, rows: list[tuple[str, ...]]) -> None:
    conn = mysql_admin(admin_url)
    try:
        conn.select_db(database)
        conn.autocommit(False)
        with conn.cursor() as cur:
            for start in range(0, len(rows), 5000):
                cur.executemany(INSERT.format(", ".join(["%s"] * 6)), rows[start : start + 5000])
        conn.commit()
        conn.autocommit(True)
        with conn.cursor() as cur:
            cur.execute("ANALYZE TABLE ota")
            cur.fetchall()
    finally:
        conn.close()


@contextlib.contextmanager
def database(backend: str, work: Path, mysql_url: str) -> Iterator[tuple[str, str | None]]:
    """(otakit database URL, MySQL database name or None); a MySQL database is dropped at the end."""
    if backend == "sqlite":
        yield f"sqlite:///{work / 'ota.db'}", None
        return
    name = f"otakit_bench_{uuid.uuid4().hex[:12]}"
    admin = mysql_admin(mysql_url)
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        yield urlsplit(mysql_url)._replace(path=f"/{name}").geturl(), name
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def latencies(client: httpx.Client, path: str, count: int) -> list[float]:
    out = []
    for _ in range(count):
        start = time.perf_counter()
        response = client.get(path)
        out.append(time.perf_counter() - start)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: {response.status_code} {response.text}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_backend_options(parser)
    parser.add_argument("--versions", type=int, default=100_000, help="versions of package 'big'")
    parser.add_argument("--requests", type=int, default=1000, help="sequential requests per side per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternated rounds for (a) and (b)")
    add_wrk_options(parser)
    parser.add_argument("--skip-wrk", action="store_true", help="only (a)")
    args = parser.parse_args()

    with (
        temp_dir("otakit-bench-latest-") as work,
        database(args.backend, work, args.mysql_url) as (url, dbname),
    ):
        print(
            f"backend {args.backend}: inserting {args.versions} versions of 'big' and 1 of 'small' ...",
            flush=True,
        )
        started = time.perf_counter()
        asyncio.run(migrate(url))
        rows = list(rows_for("big", versions(args.versions))) + list(rows_for("small", ["1.0.0"]))
        if dbname is None:
            fill_sqlite(work / "ota.db", rows)
        else:
            fill_mysql(args.mysql_url, dbname, rows)
        highest = max(rows[:-1], key=lambda r: r[3])[2]
        print(
            f"  done in {time.perf_counter() - started:.1f} s; highest version of 'big' is {highest}",
            flush=True,
        )

        big = f"/latestVersion?package=big&branch={BRANCH}"
        small = f"/latestVersion?package=small&branch={BRANCH}"
        # (a) measures the database lookup itself: that server has its answer cache turned off.
        no_cache = {**otakit_env(work, url), "OTAKIT_LATEST_CACHE_SECONDS": "0"}
        with (
            uvicorn_server(work, env=otakit_env(work, url)) as server,
            uvicorn_server(work, env=no_cache) as uncached,
            uvicorn_server(work, "bare_app:create_app", ready_path="/const") as bare,
        ):
            with httpx.Client(base_url=uncached.url, timeout=30) as client:
                answer = client.get(big).json()
                assert answer["content.json"]["version"] == highest, answer
                assert client.get(small).json()["content.json"]["version"] == "1.0.0"
                latencies(client, big, 100)  # warm-up
                latencies(client, small, 100)
                lat_rows = []
                for n in range(args.rounds):
                    order = ["big", "small"] if n % 2 == 0 else ["small", "big"]
                    med: dict[str, float] = {}
                    for side in order:
                        med[side] = statistics.median(
                            latencies(client, big if side == "big" else small, args.requests)
                        )
                    lat_rows.append(
                        [
                            n + 1,
                            "/".join(order),
                            med["big"] * 1e3,
                            med["small"] * 1e3,
                            med["big"] / med["small"],
                        ]
                    )
                    print(
                        f"  (a) round {n + 1}: big {med['big'] * 1e3:.3f} ms, small {med['small'] * 1e3:.3f} ms",
                        flush=True,
                    )

            wrk_rows = []
            if not args.skip_wrk:
                targets = {
                    "otakit": server.url + big,
                    "uncached": uncached.url + big,
                    "bare": bare.url + "/const",
                }
                for side in targets:  # warm-up, short
                    wrk(targets[side], 2, args.threads, args.connections)  # raises on errors
                for n in range(args.rounds):
                    order = ["bare", "otakit", "uncached"] if n % 2 == 0 else ["uncached", "otakit", "bare"]
                    rps = {
                        side: wrk(targets[side], args.duration, args.threads, args.connections).rps
                        for side in order
                    }
                    wrk_rows.append(
                        [
                            n + 1,
                            "/".join(order),
                            rps["bare"],
                            rps["otakit"],
                            rps["otakit"] / rps["bare"],
                            rps["uncached"] / rps["bare"],
                        ]
                    )
                    print(
                        f"  (b) round {n + 1}: bare {rps['bare']:.0f} req/s, otakit {rps['otakit']:.0f} req/s, "
                        f"uncached {rps['uncached']:.0f} req/s",
                        flush=True,
                    )

    print()
    print(
        f"(a) GET /latestVersion latency, backend {args.backend}: {args.versions} versions vs 1, "
        f"{args.requests} sequential keep-alive requests per side per round"
    )
    print_table(["round", "order", "big median ms", "small median ms", "ratio"], lat_rows)
    ratio_a = median([r[4] for r in lat_rows])
    print(
        f"ratio big/small (median of rounds): {ratio_a:.2f}  {verdict(ratio_a, 1.2, higher_is_better=False)}"
    )
    if wrk_rows:
        goal = 0.7 if args.backend == "sqlite" else 0.5
        print()
        print(
            f"(b) requests/s under wrk -t{args.threads} -c{args.connections} -d{args.duration}s, "
            f"backend {args.backend}: /latestVersion (big) vs bare FastAPI /const"
        )
        print_table(["round", "order", "bare req/s", "otakit req/s", "ratio", "uncached ratio"], wrk_rows)
        ratio_b = median([r[4] for r in wrk_rows])
        print(f"ratio otakit/bare (median of rounds): {ratio_b:.2f}  {verdict(ratio_b, goal)}")
        print(
            f"ratio with the answer cache off (OTAKIT_LATEST_CACHE_SECONDS=0): {median([r[5] for r in wrk_rows]):.2f}"
        )
    print(
        json.dumps(
            {
                "backend": args.backend,
                "latency_ratio": round(ratio_a, 3),
                "rps_ratio": round(median([r[4] for r in wrk_rows]), 3) if wrk_rows else None,
                "rps_ratio_uncached": round(median([r[5] for r in wrk_rows]), 3) if wrk_rows else None,
            }
        )
    )


if __name__ == "__main__":
    main()

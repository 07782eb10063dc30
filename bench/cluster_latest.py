"""``make cluster``'s shape: ``/latestVersion`` throughput through nginx with 1 vs 2 ``otakit server``
processes behind it, and how soon every process answers a new upload.

The cluster is deploy/cluster/run.py's own (its ``Cluster``: a fresh MariaDB database
``otakit_bench_<hex>`` on ``--mysql-url``, migrated once, two ``otakit server`` processes on it and on
one files folder; its ``nginx_config``: ``least_conn`` upstream, keepalive 32, 2 workers), plus a second
nginx of the same config with only the first server in its upstream. Same database, same data.

1. ``wrk -t2 -c32 -d10s`` on ``/latestVersion?package=P&branch=B`` (the cached anonymous answer) through
   the 1-server nginx (the baseline) and through the 2-server nginx, alternated round by round (the
   order flips each round) after a short warm-up of each; the median of the per-round ratios 2/1 is
   quoted. Each server's own ``/metrics`` says how nginx spread the 2-server runs.
2. ``--uploads`` uploads of new versions through nginx; from each 200, every server is asked on its own
   port in a tight loop (no sleep) until it answers the new version. The spread of an upload is the
   time until the last one did; its median and max are quoted (goal: within ``latest_cache_seconds``,
   5 s by default; the change counter is read every 0.5 s).

The database is dropped at the end, the processes stopped, the temp dir removed.

    .venv/bin/python bench/cluster_latest.py [--rounds 5] [--duration 10] [--threads 2]
        [--connections 32] [--uploads 20] [--port 8300] [--mysql-url mysql://root@127.0.0.1:3306]
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from _cluster import cluster_run
from _common import add_mysql_option, add_wrk_options, median, print_table, temp_dir, verdict, wrk
from metrics import counted

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))  # as deploy/cluster/run.py does
from supervise import Children, StepError, child_env, mysql_connect, port_is_free, run, say, wait_for

SPREAD_GOAL = 5.0  # latest_cache_seconds' default
SPREAD_TIMEOUT = 10.0
SIDES = ("1 server", "2 servers")


def drop_database(mysql_url: str, name: str) -> None:
    url = urlsplit(mysql_url)._replace(path=f"/{name}").geturl()
    with closing(mysql_connect(url, database=False)) as connection, connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")


def start_nginx(
    children: Children, folder: Path, port: int, server_ports: list[int], *, local_files: bool
) -> None:
    """A second nginx, deploy/cluster/run.py's config with ``server_ports`` in its upstream."""
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (folder / "nginx-temp" / sub).mkdir(parents=True, exist_ok=True)
    config = folder / "nginx.conf"
    config.write_text(cluster_run.nginx_config(folder, port, server_ports, local_files=local_files))
    children.start(
        f"nginx (port {port})",
        [cluster_run.NGINX, "-p", f"{folder}/", "-c", str(config)],
        env=child_env(),
        cwd=folder,
        log=folder / "nginx.log",
        stop_signal=signal.SIGQUIT,
    )


def spread(client: httpx.Client, ports: list[int], version: str) -> float:
    """Seconds until every server, asked on its own port in a tight loop, answers ``version``."""
    started = time.monotonic()
    waiting = list(ports)
    query = {"package": cluster_run.PACKAGE, "branch": cluster_run.BRANCH}
    while waiting:
        for port in list(waiting):
            response = client.get(f"http://127.0.0.1:{port}/latestVersion", params=query)
            if response.status_code == 200 and response.json()["content.json"]["version"] == version:
                waiting.remove(port)
        if waiting and time.monotonic() - started > SPREAD_TIMEOUT:
            raise StepError(f"ports {waiting} did not answer {version} within {SPREAD_TIMEOUT:g} s")
    return time.monotonic() - started


def measured(url: str, seconds: float, threads: int, connections: int) -> float:
    """wrk's requests/s; its errors as a StepError, so that the run stops as every other step does."""
    try:
        return wrk(url, seconds, threads, connections).rps
    except RuntimeError as error:
        raise StepError(str(error)) from None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    add_wrk_options(parser)
    parser.add_argument("--uploads", type=int, default=20, help="uploads timed for the spread")
    parser.add_argument(
        "--port", type=int, default=8300, help="2-server nginx; servers on the next 2, 1-server nginx after"
    )
    add_mysql_option(parser)
    parser.add_argument(
        "--store", choices=("s3", "local"), default="s3", help="the cluster's store (make cluster's)"
    )
    args = parser.parse_args()

    database = f"otakit_bench_{secrets.token_hex(4)}"
    children = Children()
    rows: list[list[object]] = []
    spreads: list[float] = []
    shares: list[str] = []
    clusters: list[Any] = []  # cluster_run.Cluster, loaded from its file

    def steps() -> None:
        folder = work / "cluster"
        folder.mkdir()
        cluster = cluster_run.Cluster(
            children, folder, args.port, 2, args.mysql_url, database, store=args.store
        )
        clusters.append(cluster)
        one_port = args.port + 3
        busy = [p for p in [args.port, *cluster.server_ports, one_port] if not port_is_free(p)]
        if busy:
            raise StepError(f"ports {busy} in use on 127.0.0.1; pass another --port")
        cluster.create_database()
        if args.store == "s3":
            cluster.start_seaweedfs()
        cluster.start_servers()
        cluster.start_nginx()
        start_nginx(
            children, work / "nginx-1", one_port, cluster.server_ports[:1], local_files=args.store == "local"
        )
        path = f"/latestVersion?package={cluster_run.PACKAGE}&branch={cluster_run.BRANCH}"
        urls = {SIDES[0]: f"http://127.0.0.1:{one_port}{path}", SIDES[1]: cluster.url + path}
        with httpx.Client(timeout=30) as client:
            tests = [f"http://127.0.0.1:{one_port}/test", f"{cluster.url}/test"]
            wait_for("both nginx answering", lambda: all(client.get(u).is_success for u in tests), children)
            data, content = cluster_run.make_package("1.0.0", f"{cluster.url}/")
            if (response := cluster.upload(client, data, content, "1.0.0")).status_code != 200:
                raise StepError(f"upload of 1.0.0: {response.status_code} {response.text}")
            spread(client, cluster.server_ports, "1.0.0")

            say(f"\n(1) wrk -t{args.threads} -c{args.connections} -d{args.duration}s {path}")
            for url in urls.values():  # warm-up
                measured(url, 2, args.threads, args.connections)
            for n in range(args.rounds):
                order = list(SIDES) if n % 2 == 0 else list(reversed(SIDES))
                rps: dict[str, float] = {}
                for side in order:
                    before = [counted(f"http://127.0.0.1:{p}") for p in cluster.server_ports]
                    rps[side] = measured(urls[side], args.duration, args.threads, args.connections)
                    if side == SIDES[1]:
                        after = [counted(f"http://127.0.0.1:{p}") for p in cluster.server_ports]
                        done = [a - b for a, b in zip(after, before, strict=True)]
                        shares.append("/".join(f"{100 * d / sum(done):.0f}%" for d in done))
                one, two = rps[SIDES[0]], rps[SIDES[1]]
                rows.append([n + 1, " then ".join(order), one, two, two / one, shares[-1]])
                say(f"  round {n + 1}: 1 server {one:.0f} req/s, 2 servers {two:.0f} req/s")

            say(f"\n(2) {args.uploads} uploads through nginx, then every server polled on its own port")
            for n in range(args.uploads):
                version = f"2.0.{n}"
                data, content = cluster_run.make_package(version, f"{cluster.url}/")
                if (response := cluster.upload(client, data, content, version)).status_code != 200:
                    raise StepError(f"upload of {version}: {response.status_code} {response.text}")
                spreads.append(spread(client, cluster.server_ports, version))
            children.check_alive()

    with temp_dir("otakit-bench-cluster-") as work:
        try:
            code = run(
                "cluster_latest", children, steps, stopping="stopping nginx, the servers and SeaweedFS"
            )
        finally:
            drop_database(args.mysql_url, database)
            for cluster in clusters:
                cluster.remove_weed_sockets()
    if code or not spreads:
        return code or 1

    print()
    print_table(["round", "order", "1 server req/s", "2 servers req/s", "2/1", "2-server split"], rows)
    ratio = median([float(row[4]) for row in rows])  # type: ignore[arg-type]
    one = median([float(row[2]) for row in rows])  # type: ignore[arg-type]
    two = median([float(row[3]) for row in rows])  # type: ignore[arg-type]
    print(f"\nmedian 2/1: {ratio:.3f}; median req/s: 1 server {one:.0f}, 2 servers {two:.0f}")
    print(
        f"this machine has {os.cpu_count()} cores, shared by nginx (2 workers), wrk ({args.threads} threads) "
        "and the servers: the ratio says what a second process adds here, not on a bigger machine"
    )
    ms = sorted(1000 * s for s in spreads)
    print(
        f"\nupload 200 -> every server answers it: median {median(ms):.0f} ms, max {ms[-1]:.0f} ms "
        f"over {len(ms)} uploads; max within latest_cache_seconds ({SPREAD_GOAL:g} s): "
        f"{verdict(ms[-1] / 1000, SPREAD_GOAL, higher_is_better=False)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the metrics middleware costs on the hot path: ``/latestVersion`` requests/s with metrics on vs off.

Two servers (uvicorn, httptools, one process each) on one SQLite database and one files folder: the
default one (metrics on: every request counted by route template, method and status, with its latency)
and one with ``OTAKIT_METRICS_ENABLED=false`` (no middleware, no ``/metrics``). One package version is
uploaded; ``wrk -t2 -c32 -d10s`` on ``/latestVersion?package=P&branch=B`` (the cached anonymous answer,
the path every polling device takes) of each, alternated round by round (the order flips each round)
after a short warm-up of each; the median of the per-round ratios on/off is quoted (goal >= 0.95: less
than 5 % overhead). Afterwards the metrics server's ``/metrics`` must have counted every request wrk made.

    .venv/bin/python bench/metrics.py [--rounds 5] [--duration 10] [--threads 2] [--connections 32]
"""

from __future__ import annotations

import argparse

import httpx
from prometheus_client.parser import text_string_to_metric_families

from _common import add_wrk_options, median, otakit_env, print_table, temp_dir, uvicorn_server, verdict, wrk
from _fleet import publish

PACKAGE, BRANCH = "bench", "main"
GOAL = 0.95


def counted(url: str) -> float:
    """``otakit_http_requests_total`` of ``GET /latestVersion`` 200 on the server at ``url``."""
    text = httpx.get(url + "/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "otakit_http_requests_total" and sample.labels == {
                "route": "/latestVersion",
                "method": "GET",
                "status": "200",
            }:
                return sample.value
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    add_wrk_options(parser)
    args = parser.parse_args()

    with temp_dir("otakit-bench-metrics-") as work:
        env = otakit_env(work, f"sqlite:///{work / 'ota.db'}")
        with (
            uvicorn_server(work, env=env) as on,
            uvicorn_server(work, env={**env, "OTAKIT_METRICS_ENABLED": "false"}) as off,
        ):
            if httpx.get(off.url + "/metrics", timeout=10).status_code != 404:
                raise RuntimeError("the server with OTAKIT_METRICS_ENABLED=false serves /metrics")
            publish(on.url, PACKAGE, BRANCH, "1.0")
            path = f"/latestVersion?package={PACKAGE}&branch={BRANCH}"
            sides = {"off": off.url + path, "on": on.url + path}
            made = 0
            for side, url in sides.items():  # warm-up
                result = wrk(url, 2, args.threads, args.connections)
                made += result.requests if side == "on" else 0
            rows: list[list[object]] = []
            for n in range(args.rounds):
                order = ["off", "on"] if n % 2 == 0 else ["on", "off"]
                rps: dict[str, float] = {}
                for side in order:
                    result = wrk(sides[side], args.duration, args.threads, args.connections)
                    rps[side] = result.rps
                    made += result.requests if side == "on" else 0
                rows.append([n + 1, "/".join(order), rps["off"], rps["on"], rps["on"] / rps["off"]])
                print(f"  round {n + 1}: off {rps['off']:.0f} req/s, on {rps['on']:.0f} req/s", flush=True)
            seen = counted(on.url)

    print()
    print_table(["round", "order", "off req/s", "on req/s", "on/off"], rows)
    ratio = median([float(row[4]) for row in rows])  # type: ignore[arg-type]
    print(f"\nmedian on/off: {ratio:.3f}  {verdict(ratio, GOAL)}")
    print(
        f"median req/s: off {median([float(r[2]) for r in rows]):.0f}, on {median([float(r[3]) for r in rows]):.0f}"
    )  # type: ignore[arg-type]
    print(f"/metrics counted {seen:.0f} GET /latestVersion 200 of the {made} wrk made", end="")
    print(" (ok)" if seen >= made else " (MISSING SOME)")


if __name__ == "__main__":
    main()

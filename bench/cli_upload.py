"""Upload speed of ``otakit upload`` (the CLI) against curl, to the same real server.

A package (1 GiB of random bytes named .zip by default: the server stores the file, it does not unzip
it) and its content.json. Subject: the console script
``otakit upload ZIP --content content.json --server URL --token T --force``, a subprocess whose stdout
and stderr are pipes (not a terminal, so no progress bar). It streams the file while a thread hashes
it ahead of the upload (the local check against content.json; the last piece waits for it). Baseline:
``curl -sS -X PUT -H 'Authorization: Bearer T' -F content=<content.json -F file=@ZIP URL/upload?force=1``.
Server: uvicorn + httptools, SQLite, files dir on the same disk (as ``upload.py``). The two alternate
round by round; both run under ``/usr/bin/time -v``, which gives each one's peak RSS and CPU. Before
every run dirty pages are written back (``sync``) and the package's pages are dropped from the page
cache (``--cache cold``, the default) or read once (``--cache warm``), the same for both sides.

Prints MB/s (10^6 bytes/s of the file's size over the command's wall time) of each, the median ratio
cli/curl (goal >= 0.9), and the CLI process's peak RSS (goal < 100 MB).

    .venv/bin/python bench/cli_upload.py [--size-mb 1024] [--rounds 5] [--cache cold|warm]
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from _common import (
    TOKEN,
    MiB,
    bench_parser,
    check_uploaded,
    content_json,
    curl_upload_command,
    drop_cache,
    make_random_file,
    median,
    otakit_env,
    peak_rss_mb,
    print_table,
    process_cpu_s,
    temp_dir,
    uvicorn_server,
    verdict,
    warm_cache,
)
from pack import otakit_script

TIME = "/usr/bin/time"


def timed_run(argv: list[str]) -> tuple[float, float, float, bytes]:
    """Run ``argv`` under ``/usr/bin/time -v``: (wall seconds, peak RSS MiB, CPU seconds, stdout)."""
    start = time.perf_counter()
    done = subprocess.run([TIME, "-v", *argv], capture_output=True)
    elapsed = time.perf_counter() - start
    report = done.stderr.decode(errors="replace")
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stdout!r}\n{report}")

    def field(name: str) -> float:
        match = re.search(rf"^\s*{re.escape(name)}: ([\d.]+)$", report, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"no {name!r} in the output of /usr/bin/time:\n{report}")
        return float(match[1])

    rss = field("Maximum resident set size (kbytes)") / 1024
    cpu = field("User time (seconds)") + field("System time (seconds)")
    return elapsed, rss, cpu, done.stdout


def cli_upload(otakit: str, url: str, content: Path, zip_path: Path) -> tuple[float, float, float]:
    elapsed, rss, cpu, out = timed_run(
        [otakit, "upload", str(zip_path), "--content", str(content), "--server", url,
         "--token", TOKEN, "--force"]
    )  # fmt: skip
    if not out.startswith(b"published "):
        raise RuntimeError(f"otakit upload said {out!r}")
    return elapsed, rss, cpu


def curl_upload(url: str, content: Path, zip_path: Path) -> tuple[float, float, float]:
    elapsed, rss, cpu, out = timed_run(curl_upload_command(url, content, zip_path))
    check_uploaded(out)
    return elapsed, rss, cpu


def main() -> None:
    parser = bench_parser(__doc__, size_mb=1024, rounds=5, what="package", cache="cold")
    args = parser.parse_args()
    if not os.access(TIME, os.X_OK):
        raise SystemExit("needs GNU time: apt-get install -y time")
    otakit = otakit_script()
    size = args.size_mb * MiB

    with temp_dir("otakit-bench-cli-upload-") as work:
        big = work / "big.zip"
        print(f"writing {args.size_mb} MiB of random data to {big} ...", flush=True)
        sha = make_random_file(big, size)
        content = work / "content.json"
        content.write_text(content_json("benchpkg", "main", "1.0.0", sha))

        def prepare() -> None:
            os.sync()
            (drop_cache if args.cache == "cold" else warm_cache)(big)
            time.sleep(0.5)

        with uvicorn_server(work, env=otakit_env(work, f"sqlite:///{work / 'ota.db'}")) as server:
            for _ in range(args.warmup):
                prepare()
                curl_upload(server.url, content, big)
                prepare()
                cli_upload(otakit, server.url, content, big)
            rows = []
            for n in range(args.rounds):
                order = ["baseline", "subject"] if n % 2 == 0 else ["subject", "baseline"]
                runs: dict[str, tuple[float, float, float]] = {}
                server_cpu: dict[str, float] = {}
                for side in order:
                    prepare()
                    before = process_cpu_s(server.pid)
                    if side == "baseline":
                        runs[side] = curl_upload(server.url, content, big)
                    else:
                        runs[side] = cli_upload(otakit, server.url, content, big)
                    server_cpu[side] = process_cpu_s(server.pid) - before
                curl_mbs = size / runs["baseline"][0] / 1e6
                cli_mbs = size / runs["subject"][0] / 1e6
                rows.append(
                    [n + 1, "/".join(order), curl_mbs, cli_mbs, cli_mbs / curl_mbs, runs["baseline"][2],
                     runs["subject"][2], server_cpu["baseline"], server_cpu["subject"], runs["baseline"][1],
                     runs["subject"][1]]
                )  # fmt: skip
                print(
                    f"  round {n + 1}: curl {curl_mbs:.0f} MB/s, otakit upload {cli_mbs:.0f} MB/s", flush=True
                )
            server_hwm = peak_rss_mb(server.pid)[0]
            stored = work / "files" / "benchpkg" / "main" / "benchpkg-main-1.0.0.zip"
            assert stored.stat().st_size == size

    print()
    print(f"upload of {args.size_mb} MiB, page cache: {args.cache}, {args.rounds} rounds")
    print_table(
        ["round", "order", "curl MB/s", "cli MB/s", "ratio", "curl CPU s", "cli CPU s", "server CPU s (curl)",
         "server CPU s (cli)", "curl RSS MiB", "cli RSS MiB"],
        rows,
    )  # fmt: skip
    ratio = median([r[4] for r in rows])
    cli_rss = max(r[10] for r in rows)
    print()
    print(f"median curl:          {median([r[2] for r in rows]):.0f} MB/s")
    print(f"median otakit upload: {median([r[3] for r in rows]):.0f} MB/s")
    print(f"ratio cli/curl (median of rounds): {ratio:.2f}  {verdict(ratio, 0.9)}")
    print(
        f"CPU seconds (median): curl {median([r[5] for r in rows]):.2f}, cli {median([r[6] for r in rows]):.2f}; "
        f"server {median([r[7] for r in rows]):.2f} (curl), {median([r[8] for r in rows]):.2f} (cli)"
    )
    print(
        f"peak RSS (max over rounds): otakit upload {cli_rss:.0f} MiB "
        f"{verdict(cli_rss, 100, higher_is_better=False)}; curl {max(r[9] for r in rows):.0f} MiB; "
        f"server VmHWM {server_hwm:.0f} MiB"
    )


if __name__ == "__main__":
    main()

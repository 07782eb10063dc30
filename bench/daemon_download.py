"""The daemon's download step alone: ``Fetcher.download`` against ``curl -o`` of the same file.

A file of random bytes (200 MiB by default) is published on a real otakit server (uvicorn + httptools,
SQLite). Subject: ``otakit.daemon.fetch.Fetcher.download`` in this process, on uvloop as in the daemon:
GET, hash and write in a worker thread while the next block arrives, fsync, sha256 check. Baseline:
``curl -sS -o FILE URL`` then an fsync of FILE (curl does not verify anything). Both write into the same
temp dir; the server's stored file is read once before every run (both download it from memory), the
output is deleted after each. The two alternate round by round.

Prints seconds and CPU seconds (this process's for the subject; curl's own plus the fsync for the
baseline) and the median ratio download/curl. No goal: the daemon's goal is the whole install
(``daemon_install.py``); this isolates its download.

    .venv/bin/python bench/daemon_download.py [--size-mb 200] [--rounds 7]
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from pathlib import Path

import anyio

from _common import (
    MiB,
    bench_parser,
    check_uploaded,
    content_json,
    curl_upload_command,
    fsync_file,
    make_random_file,
    median,
    otakit_env,
    print_table,
    rusage_cpu_s,
    temp_dir,
    uvicorn_server,
    warm_cache,
)
from otakit.content import parse_content
from otakit.daemon.fetch import Fetcher


def fetcher_download(text: str, remote: str, dest: Path) -> tuple[float, float]:
    content = parse_content(text, "content.json")

    async def download() -> None:
        async with Fetcher(retries=0) as fetcher:
            await fetcher.download(content, dest, remote=remote)

    cpu, start = rusage_cpu_s(), time.perf_counter()
    anyio.run(download, backend_options={"use_uvloop": True})
    return time.perf_counter() - start, rusage_cpu_s() - cpu


def curl_download(url: str, dest: Path) -> tuple[float, float]:
    cpu, start = rusage_cpu_s(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(["curl", "-sS", "-o", str(dest), url], check=True)
    own = time.process_time()
    fsync_file(dest)
    elapsed = time.perf_counter() - start
    return elapsed, rusage_cpu_s(resource.RUSAGE_CHILDREN) - cpu + time.process_time() - own


def main() -> None:
    parser = bench_parser(__doc__, size_mb=200, rounds=7, what="file")
    args = parser.parse_args()
    size = args.size_mb * MiB
    with temp_dir("otakit-bench-download-") as work:
        source = work / "big.zip"
        print(f"writing {args.size_mb} MiB of random data ...", flush=True)
        text = content_json("benchpkg", "main", "1.0.0", make_random_file(source, size))
        (work / "content.json").write_text(text)
        with uvicorn_server(work, env=otakit_env(work, f"sqlite:///{work / 'ota.db'}")) as server:
            done = subprocess.run(
                curl_upload_command(server.url, work / "content.json", source), capture_output=True
            )
            check_uploaded(done.stdout, done.stderr)
            source.unlink()
            stored = work / "files" / "benchpkg" / "main" / "benchpkg-main-1.0.0.zip"
            url = f"{server.url}/otafiles/benchpkg/main/benchpkg-main-1.0.0.zip"
            dest = work / "downloaded.zip"

            def run(side: str) -> tuple[float, float]:
                os.sync()
                warm_cache(stored)
                time.sleep(0.3)
                try:
                    if side == "baseline":
                        return curl_download(url, dest)
                    return fetcher_download(text, server.url, dest)
                finally:
                    dest.unlink(missing_ok=True)

            for _ in range(args.warmup):
                run("baseline")
                run("subject")
            rows = []
            for n in range(args.rounds):
                order = ["baseline", "subject"] if n % 2 == 0 else ["subject", "baseline"]
                runs = {side: run(side) for side in order}
                (curl_s, curl_cpu), (fetch_s, fetch_cpu) = runs["baseline"], runs["subject"]
                rows.append([n + 1, "/".join(order), curl_s, curl_cpu, fetch_s, fetch_cpu, fetch_s / curl_s])

    print()
    print(f"download of {args.size_mb} MiB, {args.rounds} rounds")
    print_table(
        ["round", "order", "curl s", "curl CPU s", "fetcher s", "fetcher CPU s", "fetcher/curl"], rows
    )
    print()
    print(
        f"median curl -o + fsync: {median([r[2] for r in rows]):.2f} s (CPU {median([r[3] for r in rows]):.2f})"
    )
    print(
        f"median Fetcher.download: {median([r[4] for r in rows]):.2f} s (CPU {median([r[5] for r in rows]):.2f})"
    )
    print(
        f"ratio fetcher/curl (median of rounds): {median([r[6] for r in rows]):.2f} (no goal; lower is better)"
    )


if __name__ == "__main__":
    main()

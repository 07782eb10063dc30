"""Upload throughput of ``PUT /upload`` against the local limit of the same disk.

Baseline ("local limit"): read the package file, hash it with hashlib.sha256 and write it to another
file on the same disk with 4 MiB buffers, fsync at the end: what any verified store must at least do.
Subject: ``curl -X PUT -F content=<content.json -F file=@big.zip $URL/upload?force=1`` against a real
server (uvicorn + httptools, SQLite, files dir on the same disk). Baseline and subject alternate; the
source file's pages are dropped before every run (``--cache cold``, the default) or read once before
every run (``--cache warm``), the same for both sides. Prints MB/s (10^6 bytes/s) of each, the median
ratio subject/baseline (goal >= 1.0), and the server's peak RSS (VmHWM; goal < 150 MB).

    .venv/bin/python bench/upload.py [--size-mb 1024] [--rounds 5] [--cache cold|warm]
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

from _common import (
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
    rusage_cpu_s,
    temp_dir,
    uvicorn_server,
    verdict,
    warm_cache,
)


def local_limit(src: Path, dst: Path) -> float:
    """Read, hash, write, fsync: seconds taken."""
    start = time.perf_counter()
    digest = hashlib.sha256()
    buf = bytearray(4 * MiB)
    view = memoryview(buf)
    with open(src, "rb", buffering=0) as f, open(dst, "wb", buffering=0) as out:
        while n := f.readinto(buf):
            chunk = view[:n]
            digest.update(chunk)
            out.write(chunk)
        os.fsync(out.fileno())
    elapsed = time.perf_counter() - start
    dst.unlink()
    return elapsed


def curl_upload(url: str, content: Path, zip_path: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(curl_upload_command(url, content, zip_path), capture_output=True, check=True)
    elapsed = time.perf_counter() - start
    check_uploaded(done.stdout, done.stderr)
    return elapsed


def main() -> None:
    parser = bench_parser(__doc__, size_mb=1024, rounds=5, what="package", cache="cold")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the server process (repeatable), e.g. MALLOC_TRIM_THRESHOLD_=1073741824",
    )
    args = parser.parse_args()
    size = args.size_mb * MiB

    with temp_dir("otakit-bench-upload-") as work:
        big = work / "big.zip"
        print(f"writing {args.size_mb} MiB of random data to {big} ...", flush=True)
        sha = make_random_file(big, size)
        content = work / "content.json"
        content.write_text(content_json("benchpkg", "main", "1.0.0", sha))

        def prepare() -> None:
            os.sync()  # start each run with no dirty pages left by the previous one
            (drop_cache if args.cache == "cold" else warm_cache)(big)
            time.sleep(0.5)

        env = otakit_env(work, f"sqlite:///{work / 'ota.db'}")
        env.update(item.split("=", 1) for item in args.server_env)
        with uvicorn_server(work, env=env) as server:
            rss_start = peak_rss_mb(server.pid)[1]
            # One untimed run of each side first: the first pages this VM writes after a while are
            # several times slower than later ones, whichever side touches them first.
            for _ in range(args.warmup):
                prepare()
                local_limit(big, work / "copy.bin")
                prepare()
                curl_upload(server.url, content, big)
            rows = []
            for n in range(args.rounds):
                times: dict[str, float] = {}
                order = ["baseline", "subject"] if n % 2 == 0 else ["subject", "baseline"]
                cpu: dict[str, float] = {}
                for side in order:
                    prepare()
                    if side == "baseline":
                        before = rusage_cpu_s()
                        times[side] = local_limit(big, work / "copy.bin")
                        cpu[side] = rusage_cpu_s() - before
                    else:
                        before = process_cpu_s(server.pid)
                        times[side] = curl_upload(server.url, content, big)
                        cpu[side] = process_cpu_s(server.pid) - before
                base_mbs = size / times["baseline"] / 1e6
                subj_mbs = size / times["subject"] / 1e6
                rows.append(
                    [
                        n + 1,
                        "/".join(order),
                        base_mbs,
                        subj_mbs,
                        subj_mbs / base_mbs,
                        cpu["baseline"],
                        cpu["subject"],
                    ]
                )
                print(
                    f"  round {n + 1}: local limit {base_mbs:.0f} MB/s, upload {subj_mbs:.0f} MB/s",
                    flush=True,
                )
            hwm, rss_end = peak_rss_mb(server.pid)
            stored = work / "files" / "benchpkg" / "main" / "benchpkg-main-1.0.0.zip"
            assert stored.stat().st_size == size

    print()
    print(f"upload of {args.size_mb} MiB, page cache: {args.cache}, {args.rounds} rounds")
    if args.server_env:
        print(f"server environment: {' '.join(args.server_env)}")
    print_table(
        ["round", "order", "local limit MB/s", "upload MB/s", "ratio", "local CPU s", "server CPU s"], rows
    )
    ratio = median([r[4] for r in rows])
    print()
    print(f"median local limit: {median([r[2] for r in rows]):.0f} MB/s")
    print(f"median upload:      {median([r[3] for r in rows]):.0f} MB/s")
    print(f"ratio upload/local limit (median of rounds): {ratio:.2f}  {verdict(ratio, 1.0)}")
    print(
        f"CPU seconds (median): local limit {median([r[5] for r in rows]):.2f}, "
        f"server {median([r[6] for r in rows]):.2f} (curl's own CPU not counted)"
    )
    print(
        f"server RSS: {rss_start:.0f} MiB after start, {rss_end:.0f} MiB at end, "
        f"peak (VmHWM) {hwm:.0f} MiB  {verdict(hwm, 150, higher_is_better=False)}"
    )


if __name__ == "__main__":
    main()

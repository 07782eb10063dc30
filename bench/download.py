"""Download throughput of ``GET /otafiles/...`` against nginx serving the same files dir with sendfile.

A package (1 GiB of random data by default) is uploaded once to a real otakit server (uvicorn +
httptools, SQLite). nginx (one worker, ``sendfile on``, ``root`` = the server's files dir, on its own
loopback port, config/pid/logs in a temp dir) serves the same stored file, which the store lays out
at ``<files_dir>/<package>/<branch>/<package>-<branch>-<version>.zip``. Then, alternating which goes
first, ``curl -sS -o /dev/null`` fetches it from each. Page cache: ``--cache warm`` (default: the file
is read once before every run, so both serve from memory, as a busy server does) or ``--cache cold``
(dropped before every run). Prints MB/s (10^6 bytes/s) of each and the median ratio otakit/nginx
(goal >= 1.0).

    .venv/bin/python bench/download.py [--size-mb 1024] [--rounds 5] [--cache warm|cold]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx

from _common import (
    MiB,
    bench_parser,
    check_uploaded,
    content_json,
    curl_upload_command,
    drop_cache,
    free_port,
    make_random_file,
    median,
    otakit_env,
    print_table,
    process_cpu_s,
    temp_dir,
    uvicorn_server,
    verdict,
    warm_cache,
)

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ application/zip zip; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


class Nginx:
    def __init__(self, tmp: Path, root: Path) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=self.port, root=root))
        self.log = tmp / "nginx.out"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [nginx, "-e", str(tmp / "error.log"), "-p", str(tmp), "-c", str(conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.pid_file = tmp / "nginx.pid"

    def wait_ready(self, path: str) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}: {self.log.read_text()}")
            try:
                if httpx.head(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("nginx did not answer within 20 s")

    def cpu_s(self) -> float:
        """CPU seconds of nginx's processes (master and workers)."""
        total = process_cpu_s(self.process.pid)
        for child in Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split():
            total += process_cpu_s(int(child))
        return total

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM: fast shutdown of master and workers
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def curl_get(url: str, size: int) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", url],
        capture_output=True,
        check=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if done.stdout.split() != ["200", str(size)]:
        raise RuntimeError(f"download of {url} failed: {done.stdout} {done.stderr}")
    return elapsed


def main() -> None:
    parser = bench_parser(__doc__, size_mb=1024, rounds=5, what="package", cache="warm")
    args = parser.parse_args()
    size = args.size_mb * MiB
    package, branch, version = "benchpkg", "main", "1.0.0"
    rel = f"{package}/{branch}/{package}-{branch}-{version}.zip"

    with temp_dir("otakit-bench-download-") as work:
        big = work / "big.zip"
        print(f"writing {args.size_mb} MiB of random data ...", flush=True)
        sha = make_random_file(big, size)
        content = work / "content.json"
        content.write_text(content_json(package, branch, version, sha))
        env = otakit_env(work, f"sqlite:///{work / 'ota.db'}")
        nginx_dir = work / "nginx"
        nginx_dir.mkdir()
        with uvicorn_server(work, env=env) as server:
            command = curl_upload_command(server.url, content, big, force=False)
            upload = subprocess.run(command, capture_output=True, check=True)
            check_uploaded(upload.stdout, upload.stderr)
            big.unlink()
            stored = work / "files" / rel
            assert stored.stat().st_size == size
            nginx = Nginx(nginx_dir, work / "files")
            try:
                nginx.wait_ready("/" + rel)
                urls = {"otakit": f"{server.url}/otafiles/{rel}", "nginx": f"{nginx.url}/{rel}"}
                cpu_of = {"otakit": lambda: process_cpu_s(server.pid), "nginx": nginx.cpu_s}

                def prepare() -> None:
                    (drop_cache if args.cache == "cold" else warm_cache)(stored)

                for _ in range(args.warmup):
                    for side in urls:
                        prepare()
                        curl_get(urls[side], size)
                rows = []
                for n in range(args.rounds):
                    order = ["nginx", "otakit"] if n % 2 == 0 else ["otakit", "nginx"]
                    mbs: dict[str, float] = {}
                    cpu: dict[str, float] = {}
                    for side in order:
                        prepare()
                        before = cpu_of[side]()
                        mbs[side] = size / curl_get(urls[side], size) / 1e6
                        cpu[side] = cpu_of[side]() - before
                    rows.append(
                        [
                            n + 1,
                            "/".join(order),
                            mbs["nginx"],
                            mbs["otakit"],
                            mbs["otakit"] / mbs["nginx"],
                            cpu["nginx"],
                            cpu["otakit"],
                        ]
                    )
                    print(
                        f"  round {n + 1}: nginx {mbs['nginx']:.0f} MB/s, otakit {mbs['otakit']:.0f} MB/s",
                        flush=True,
                    )
            finally:
                nginx.stop()

    print()
    print(f"download of {args.size_mb} MiB, page cache: {args.cache}, {args.rounds} rounds")
    print_table(["round", "order", "nginx MB/s", "otakit MB/s", "ratio", "nginx CPU s", "otakit CPU s"], rows)
    ratio = median([r[4] for r in rows])
    print()
    print(f"median nginx:  {median([r[2] for r in rows]):.0f} MB/s")
    print(f"median otakit: {median([r[3] for r in rows]):.0f} MB/s")
    print(f"ratio otakit/nginx (median of rounds): {ratio:.2f}  {verdict(ratio, 1.0)}")


if __name__ == "__main__":
    os.umask(0o022)
    main()

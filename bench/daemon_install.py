"""Install time of a package by the device daemon against ``curl`` + ``unzip`` of the same zip.

The package (200 MiB by default) is a zip of a few random files (4 by default), made by
``otakit.pack.pack``, so deflate level 6 as every published package is (``--method stored`` makes a
ZIP_STORED zip instead); random data does not compress, so deflate stores it in stored blocks and
unzipping is mostly copying and CRCs. It is published on a real otakit server (uvicorn + httptools,
SQLite, files dir on the same disk). A real daemon (``python -m otakit.daemon --config PATH``, config
and state in a temp dir) installs it through its API: ``POST /packages`` then ``GET /jobs/{id}`` every
20 ms until the job has succeeded: download, sha256 check, fsync, unzip into a staging folder, swap into
place, record in the config. Between rounds the package is removed again (``DELETE /packages/{name}``,
untimed). Baseline: ``curl -sS -o pkg.zip URL/otafiles/...`` then ``unzip -q -o pkg.zip -d DEST``
(Debian's unzip), the same zip from the same server, into the same disk; its output is deleted after
each run (untimed). The two alternate round by round; before every run dirty pages are written back
(``sync``) and the server's stored file is read once (both sides download it from memory).

Prints seconds of each, the median ratio daemon/baseline (goal <= 1.5) and the daemon's peak RSS
(VmHWM; goal < 100 MB). The daemon's time is also split at the end of its download step (seen by the
20 ms polling, so to within 20 ms).

    .venv/bin/python bench/daemon_install.py [--size-mb 200] [--files 4] [--rounds 5]
                                             [--method deflated|stored] [--sync]

``--sync`` ends the baseline with ``sync`` (curl -o + unzip + sync: both sides have their files on the
disk when they finish); the goal is then <= 1.0.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx

from _common import (
    TOKEN,
    MiB,
    bench_parser,
    free_port,
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
from otakit.client import ServerClient
from otakit.pack import pack

PACKAGE, BRANCH, VERSION = "benchapp", "main", "1.0.0"
DEVICE_TOKEN = "bench-device-token"
POLL_S = 0.02
BEFORE_INSTALL = ("", "check", "verify", "resolve", "download")  # job steps up to the download's end


def make_package(work: Path, size: int, files: int, method: str) -> tuple[Path, str]:
    """Return the zip and its content.json text."""
    folder = work / "app"
    folder.mkdir()
    for n in range(files):
        make_random_file(folder / f"data{n}.bin", size // files + (size % files if n == 0 else 0))
    out = work / "package"
    result = pack(folder, out, package=PACKAGE, branch=BRANCH, version=VERSION, description="benchmark")
    if method == "stored":
        # The same files and content.json fields, but ZIP_STORED: rewrite the zip and its sha256.
        with zipfile.ZipFile(result.zip_path, "w", compression=zipfile.ZIP_STORED) as archive:
            for n in range(files):
                archive.write(folder / f"data{n}.bin", f"data{n}.bin")
        raw = json.loads(result.content_path.read_text())
        raw["sha256"] = sha256_file(result.zip_path)
        result.content_path.write_text(json.dumps(raw, indent=2))
    shutil.rmtree(folder)
    return result.zip_path, result.content_path.read_text()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


class Daemon:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True)
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = folder / "daemon.json"
        self.config.write_text(
            json.dumps(
                {
                    "device": "bench-device",
                    "description": "a device in a benchmark",
                    "flask": {"host": "127.0.0.1", "port": self.port, "debug": False},
                    "token": DEVICE_TOKEN,
                    "package": [],
                    "poll_interval": 0,
                    "hook_timeout": 60,
                    "download_retries": 2,
                },
                indent=2,
            )
        )
        self.log = folder / "daemon.log"
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "otakit.daemon", "--config", str(self.config), "--log-level", "warning"],
                cwd=folder, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.pid = self.process.pid
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {DEVICE_TOKEN}"}, timeout=30
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                if self.http.get("/info").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"daemon did not answer within 60 s:\n{self.log_text()}")
            time.sleep(0.05)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait(
        self, job: dict[str, Any], start: float, timeout: float = 600
    ) -> tuple[dict[str, Any], dict[str, float]]:
        """Poll the job every 20 ms until it has finished; return it and when each step was first seen."""
        seen: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while True:
            seen.setdefault(job["step"], time.perf_counter() - start)
            if job["state"] in ("succeeded", "failed", "rolled_back"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job['id']} not done in {timeout} s:\n{self.log_text()}")
            time.sleep(POLL_S)
            job = self.http.get(f"/jobs/{job['id']}").json()["job"]
        if job["state"] != "succeeded":
            raise RuntimeError(f"job {job['action']} {job['state']}: {job['error']}\n{job['log']}")
        return job, seen

    def install(self, remote: str, local: Path) -> tuple[float, float]:
        """(seconds from the POST to the job's success, seconds until its download step ended)."""
        start = time.perf_counter()
        answer = self.http.post(
            "/packages", json={"package": PACKAGE, "branch": BRANCH, "remote": remote, "local": str(local)}
        )
        if answer.status_code != 202:
            raise RuntimeError(f"POST /packages answered {answer.status_code}: {answer.text}")
        _, seen = self.wait(answer.json()["job"], start)
        elapsed = time.perf_counter() - start
        later = [t for step, t in seen.items() if step not in BEFORE_INSTALL]
        return elapsed, min(later, default=elapsed)

    def remove(self) -> None:
        answer = self.http.delete(f"/packages/{PACKAGE}")
        if answer.status_code != 202:
            raise RuntimeError(f"DELETE answered {answer.status_code}: {answer.text}")
        self.wait(answer.json()["job"], time.perf_counter())

    def stop(self) -> None:
        self.http.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def baseline(url: str, work: Path, *, sync: bool = False) -> tuple[float, float]:
    """(seconds of curl + unzip (+ sync), seconds of the curl alone)."""
    zip_path, dest = work / "pkg.zip", work / "dest"
    start = time.perf_counter()
    subprocess.run(["curl", "-sS", "-f", "-o", str(zip_path), url], check=True)
    downloaded = time.perf_counter() - start
    subprocess.run(["unzip", "-q", "-o", str(zip_path), "-d", str(dest)], check=True)
    if sync:  # what the daemon does too: its files are on the disk when the job succeeds
        subprocess.run(["sync"], check=True)
    elapsed = time.perf_counter() - start
    zip_path.unlink()
    shutil.rmtree(dest)
    return elapsed, downloaded


def main() -> None:
    parser = bench_parser(__doc__, size_mb=200, rounds=5, what="package")
    parser.add_argument("--files", type=int, default=4, help="random files in the package (default 4)")
    parser.add_argument(
        "--method",
        choices=["deflated", "stored"],
        default="deflated",
        help="zip compression (default deflated)",
    )
    parser.add_argument(
        "--sync", action="store_true", help="the baseline ends with `sync`, as the daemon's fsyncs do"
    )
    args = parser.parse_args()
    for tool in ("curl", "unzip"):
        if not shutil.which(tool):
            raise SystemExit(f"needs {tool}: apt-get install -y {tool}")

    with temp_dir("otakit-bench-daemon-") as work:
        print(f"packing {args.files} random files, {args.size_mb} MiB ({args.method}) ...", flush=True)
        zip_path, content_text = make_package(work, args.size_mb * MiB, args.files, args.method)
        zip_size = zip_path.stat().st_size
        with uvicorn_server(work, env=otakit_env(work, f"sqlite:///{work / 'ota.db'}")) as server:
            with ServerClient(server.url, token=TOKEN) as client:
                client.upload(zip_path, content_text, force=True)
            stored = work / "files" / PACKAGE / BRANCH / f"{PACKAGE}-{BRANCH}-{VERSION}.zip"
            assert stored.stat().st_size == zip_size
            zip_path.unlink()
            file_url = f"{server.url}/otafiles/{PACKAGE}/{BRANCH}/{PACKAGE}-{BRANCH}-{VERSION}.zip"
            base_dir = work / "baseline"
            base_dir.mkdir()
            local = work / "device" / "apps" / PACKAGE
            daemon = Daemon(work / "device")
            try:
                rss_start = peak_rss_mb(daemon.pid)[1]

                def prepare() -> None:
                    os.sync()
                    warm_cache(stored)
                    time.sleep(0.5)

                for _ in range(args.warmup):
                    prepare()
                    baseline(file_url, base_dir, sync=args.sync)
                    prepare()
                    daemon.install(server.url, local)
                    daemon.remove()
                rows = []
                for n in range(args.rounds):
                    order = ["baseline", "subject"] if n % 2 == 0 else ["subject", "baseline"]
                    for side in order:
                        prepare()
                        if side == "baseline":
                            base_s, curl_s = baseline(file_url, base_dir, sync=args.sync)
                        else:
                            before = process_cpu_s(daemon.pid)
                            daemon_s, download_s = daemon.install(server.url, local)
                            daemon_cpu = process_cpu_s(daemon.pid) - before
                            installed = sorted(p.name for p in local.iterdir())
                            assert installed == [f"data{i}.bin" for i in range(args.files)], installed
                            daemon.remove()
                    rows.append(
                        [n + 1, "/".join(order), curl_s, base_s, download_s, daemon_s, daemon_s / base_s,
                         daemon_cpu]
                    )  # fmt: skip
                    print(
                        f"  round {n + 1}: curl + unzip {base_s:.2f} s, daemon {daemon_s:.2f} s", flush=True
                    )
                hwm, rss_end = peak_rss_mb(daemon.pid)
            finally:
                daemon.stop()

    print()
    print(
        f"install of a {zip_size / MiB:.0f} MiB zip ({args.files} random files, {args.method}), "
        f"{args.rounds} rounds"
    )
    print_table(
        ["round", "order", "curl s", "curl+unzip s", "daemon download s", "daemon s", "daemon/baseline",
         "daemon CPU s"],
        rows,
    )  # fmt: skip
    ratio = median([r[6] for r in rows])
    print()
    print(
        f"median curl + unzip: {median([r[3] for r in rows]):.2f} s "
        f"(curl {median([r[2] for r in rows]):.2f} s)"
    )
    print(
        f"median daemon:       {median([r[5] for r in rows]):.2f} s "
        f"(download step {median([r[4] for r in rows]):.2f} s)"
    )
    print(
        f"ratio daemon/baseline (median of rounds): {ratio:.2f}  {verdict(ratio, 1.0 if args.sync else 1.5, higher_is_better=False)}"
    )
    print(
        f"daemon RSS: {rss_start:.0f} MiB after start, {rss_end:.0f} MiB at end, "
        f"peak (VmHWM) {hwm:.0f} MiB  {verdict(hwm, 100, higher_is_better=False)}"
    )


if __name__ == "__main__":
    main()

"""Shared helpers for the benchmarks: servers on loopback, temp dirs, page cache, tables.

Every figure a benchmark prints is a ratio against a baseline measured in the same run, with the two
alternated round by round; medians are quoted. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

BENCH_DIR = Path(__file__).resolve().parent
TOKEN = "bench-token"
MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    """A temp dir in /tmp (the same disk as /work on these machines), removed at the end."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("OTAKIT_BENCH_TMP", "/tmp")))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Server:
    """A uvicorn subprocess running an app factory with the same flags as tests/servers.py."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.pid = process.pid
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@contextlib.contextmanager
def uvicorn_server(
    workdir: Path,
    app: str = "otakit.server.app:create_app",
    *,
    env: dict[str, str] | None = None,
    ready_path: str = "/test",
) -> Iterator[Server]:
    """Start ``python -m uvicorn APP --factory --http httptools`` on 127.0.0.1; killed at the end."""
    port = free_port()
    log = workdir / f"uvicorn-{port}.log"
    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH", "")])),
        **(env or {}),
    }
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                app,
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--http",
                "httptools",
                "--log-level",
                "warning",
            ],
            cwd=workdir,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, port, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{server.log_text()}")
            try:
                if httpx.get(server.url + ready_path, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not answer within 120 s:\n{server.log_text()}")
            time.sleep(0.05)
        yield server
    finally:
        server.stop()


def otakit_env(workdir: Path, database_url: str) -> dict[str, str]:
    return {
        "OTAKIT_DATABASE_URL": database_url,
        "OTAKIT_FILES_DIR": str(workdir / "files"),
        "OTAKIT_UPLOAD_TOKENS": TOKEN,
        "OTAKIT_MAX_UPLOAD_BYTES": str(64 * 1024**3),
    }


def make_random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes (fsynced); return their sha256."""
    digest = hashlib.sha256()
    block = 4 * MiB
    with open(path, "wb", buffering=0) as out:
        left = size
        while left:
            data = os.urandom(min(block, left))
            digest.update(data)
            out.write(data)
            left -= len(data)
        os.fsync(out.fileno())
    return digest.hexdigest()


def content_json(package: str, branch: str, version: str, sha256: str) -> str:
    return json.dumps(
        {
            "package": package,
            "description": "benchmark package",
            "updateInfo": "",
            "version": version,
            "branch": branch,
            "local": "./bench",
            "remote": "http://127.0.0.1/",
            "sha256": sha256,
            "BeforeUpdate": "",
            "AfterUpdate": "",
            "dependencies": {},
        }
    )


def drop_cache(path: Path) -> None:
    """Ask the kernel to drop ``path``'s clean pages (POSIX_FADV_DONTNEED)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm_cache(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(4 * MiB)
        while f.readinto(buf):
            pass


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def peak_rss_mb(pid: int) -> tuple[float, float]:
    """(VmHWM, VmRSS) of ``pid`` in MiB, from /proc/<pid>/status."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmHWM"], values["VmRSS"]


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rusage_cpu_s(who: int = resource.RUSAGE_SELF) -> float:
    """User + system CPU seconds of this process (``RUSAGE_SELF``) or of its waited-for children."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(cell.rjust(widths[i]) for i, cell in enumerate(row)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def verdict(ratio: float, goal: float, higher_is_better: bool = True) -> str:
    met = ratio >= goal if higher_is_better else ratio <= goal
    return f"{'met' if met else 'NOT met'} (goal {'>=' if higher_is_better else '<='} {goal})"


@dataclass(frozen=True)
class WrkResult:
    rps: float
    requests: int


def wrk(url: str, seconds: float, threads: int, connections: int, script: Path | None = None) -> WrkResult:
    """One wrk run against ``url``; RuntimeError when any answer was not 2xx/3xx or a socket failed (a
    benchmark of errors measures nothing)."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s"]
    if script is not None:
        command += ["-s", str(script)]
    done = subprocess.run([*command, url], capture_output=True, text=True, check=True)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    total = re.search(r"(\d+) requests in", done.stdout)
    if not rps or not total:
        raise RuntimeError(f"cannot read wrk's output:\n{done.stdout}{done.stderr}")
    if "Non-2xx" in done.stdout or "Socket errors" in done.stdout:
        raise RuntimeError(f"wrk saw errors against {url}:\n{done.stdout}")
    return WrkResult(float(rps.group(1)), int(total.group(1)))


def add_wrk_options(parser: argparse.ArgumentParser) -> None:
    """wrk's flags, as every wrk benchmark takes them."""
    parser.add_argument("--duration", type=int, default=10, help="wrk seconds per run")
    parser.add_argument("--threads", type=int, default=2, help="wrk -t")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c")


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    """Which database a benchmark runs on."""
    parser.add_argument("--backend", choices=["sqlite", "mysql"], default="sqlite")
    add_mysql_option(parser)


def add_mysql_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mysql-url",
        default="mysql://root@127.0.0.1:3306",
        help="MariaDB/MySQL server (a database is created and dropped there)",
    )


def bench_parser(
    doc: str | None, *, size_mb: int, rounds: int = 5, what: str = "package", cache: str | None = None
) -> argparse.ArgumentParser:
    """The flags every benchmark shares: --size-mb, --rounds, --warmup and (with ``cache``) --cache."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--size-mb", type=int, default=size_mb, help=f"{what} size in MiB (default {size_mb})"
    )
    parser.add_argument("--rounds", type=int, default=rounds, help=f"alternated rounds (default {rounds})")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    if cache is not None:
        parser.add_argument(
            "--cache",
            choices=["cold", "warm"],
            default=cache,
            help=f"cold: drop the data from the page cache before each run; warm: pre-read it (default {cache})",
        )
    return parser


def curl_upload_command(url: str, content: Path, zip_path: Path, *, force: bool = True) -> list[str]:
    """``curl -F`` uploading ``zip_path`` with its content.json: the baseline client of the benchmarks."""
    target = f"{url}/upload?force=1" if force else f"{url}/upload"
    auth = f"Authorization: Bearer {TOKEN}"
    return [
        "curl",
        "-sS",
        "-X",
        "PUT",
        "-H",
        auth,
        "-F",
        f"content=<{content}",
        "-F",
        f"file=@{zip_path}",
        target,
    ]


def check_uploaded(stdout: bytes, stderr: bytes = b"") -> None:
    if b'"status":200' not in stdout:
        raise RuntimeError(f"upload failed: {stdout!r} {stderr!r}")

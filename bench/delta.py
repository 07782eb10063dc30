"""Delta updates: how small, how fast to make, and how fast a device installs from one.

1. **Size.** A package of ``--files`` random files (``--size-mb`` in all; random data does not compress,
   so the zip is as big as the files), made by ``otakit.pack.pack``, and three next versions: one small
   edit (10 bytes in one file; goal: the delta < 1 % of the zip), one file rebuilt (new random bytes:
   about that file's size is expected), every file touched (a 10-byte edit in each). For each, the
   delta's size against the new zip, the time ``otakit.delta.make_delta`` takes and its peak memory
   (VmHWM of a fresh process that only makes it: what the server's worker thread adds).
2. **Install.** A real server (SQLite) and a real daemon on loopback: the daemon has 1.0 and updates to
   the small-edit version, from the delta (the package as packed) against the same update from the zip
   (the same zips published under a second name with content.json lacking ``tree_sha256``, so the
   daemon takes the zip). Timed from ``POST /packages/{name}/update`` to the job's success (polled every
   20 ms); a rollback (untimed) between rounds puts 1.0 back. The delta is made by the server before the
   first timed round (its first request). Goal: delta faster than zip. Also the daemon's peak RSS.

    .venv/bin/python bench/delta.py [--size-mb 200] [--files 20] [--rounds 5]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from _common import (
    TOKEN,
    MiB,
    bench_parser,
    free_port,
    median,
    peak_rss_mb,
    print_table,
    temp_dir,
    uvicorn_server,
    verdict,
)
from otakit.pack import pack

PACKAGE = "bench-delta"
ZIP_ONLY = "bench-zip"
BRANCH = "main"
SIZE_GOAL = 0.01

# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec (the parent's peak, here the whole
# package in memory), while VmHWM belongs to the new process's own memory.
_MAKE = """
import sys, time
from pathlib import Path
from otakit.delta import make_delta
start = time.perf_counter()
with open(sys.argv[3], "wb") as out:
    stats = make_delta(Path(sys.argv[1]), Path(sys.argv[2]), out)
took = time.perf_counter() - start
hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
print(stats.size, took, int(hwm.split()[1]) / 1024)
"""


def write_version(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def edit(data: bytes, at: int) -> bytes:
    return data[:at] + os.urandom(10) + data[at + 10 :]


def measure_make(old_zip: Path, new_zip: Path, out: Path) -> tuple[int, float, float]:
    """(delta bytes, seconds, peak MiB) of make_delta in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", _MAKE, str(old_zip), str(new_zip), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    size, seconds, peak = done.stdout.split()
    out.unlink()
    return int(size), float(seconds), float(peak)


def upload(url: str, content: dict[str, Any], zip_path: Path) -> None:
    with open(zip_path, "rb") as data:
        answer = httpx.put(
            f"{url}/upload",
            files=[("content", (None, json.dumps(content), "application/json")), ("file", ("p.zip", data))],
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=600,
        )
    if answer.status_code != 200:
        raise RuntimeError(f"upload failed: {answer.text}")


class Device:
    """A real daemon (``python -m otakit.daemon``) with its API."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir()
        port = free_port()
        config = {
            "device": "bench",
            "description": "",
            "flask": {"host": "127.0.0.1", "port": port, "debug": False},
            "token": "bench-device",
            "package": [],
            "poll_interval": 0,
            "auto_update": False,
        }
        (folder / "daemon.json").write_text(json.dumps(config))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "otakit.daemon", "--config", str(folder / "daemon.json")],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=open(folder / "daemon.log", "ab"),  # noqa: SIM115 (closed with the process)
        )
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": "Bearer bench-device"}, timeout=600
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.http.get("/info")
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("the daemon did not answer")

    def job(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[dict[str, Any], float]:
        start = time.perf_counter()
        job = self.http.request(method, path, json=body).json()["job"]
        while job["state"] not in ("succeeded", "failed", "rolled_back"):
            time.sleep(0.02)
            job = self.http.get(f"/jobs/{job['id']}").json()["job"]
        took = time.perf_counter() - start
        if job["state"] != "succeeded":
            raise RuntimeError(f"{method} {path}: {job['state']}: {job['error']}\n" + "\n".join(job["log"]))
        return job, took

    def stop(self) -> None:
        self.http.close()
        self.process.terminate()
        self.process.wait(30)


def main() -> None:
    parser = bench_parser(__doc__, size_mb=200, rounds=5, what="package")
    parser.add_argument("--files", type=int, default=20, help="random files in the package (default 20)")
    args = parser.parse_args()
    each = args.size_mb * MiB // args.files

    with temp_dir("otakit-bench-delta-") as work:
        print(
            f"writing {args.files} random files of {each // MiB} MiB and packing 4 versions ...", flush=True
        )
        base = {f"part-{n:02d}.bin": os.urandom(each) for n in range(args.files)}
        versions = {
            "1.0": base,
            "1.1": {**base, "part-07.bin": edit(base["part-07.bin"], each // 2)},
            "1.2": {**base, "part-07.bin": os.urandom(each)},
            "1.3": {name: edit(data, each // 3) for name, data in base.items()},
        }
        packed = {
            version: pack(
                write_version(work / f"src-{version}", files),
                work / f"out-{version}",
                package=PACKAGE,
                branch=BRANCH,
                version=version,
            )
            for version, files in versions.items()
        }
        del base, versions

        print("\n(1) delta sizes (make_delta in a fresh process each)")
        size_rows = []
        for version, case in (
            ("1.1", "one small edit"),
            ("1.2", "one file rebuilt"),
            ("1.3", "every file touched"),
        ):
            new_zip = packed[version].zip_path
            delta_bytes, seconds, peak = measure_make(packed["1.0"].zip_path, new_zip, work / "delta")
            zip_bytes = new_zip.stat().st_size
            size_rows.append([case, zip_bytes, delta_bytes, delta_bytes / zip_bytes, seconds, peak])
            print(
                f"  {case}: {delta_bytes} bytes ({100 * delta_bytes / zip_bytes:.3f} % of the zip)",
                flush=True,
            )

        print("\n(2) a real daemon updates 1.0 -> 1.1: from the delta vs from the zip")
        env = {
            "OTAKIT_DATABASE_URL": f"sqlite:///{work / 'ota.db'}",
            "OTAKIT_FILES_DIR": str(work / "files"),
            "OTAKIT_UPLOAD_TOKENS": TOKEN,
            "OTAKIT_MAX_UPLOAD_BYTES": str(8 * 1024**3),
        }
        rows = []
        with uvicorn_server(work, env=env) as server:
            for version in ("1.0", "1.1"):
                result = packed[version]
                upload(server.url, result.content.raw, result.zip_path)
                plain = {k: v for k, v in result.content.raw.items() if k != "tree_sha256"}
                upload(server.url, {**plain, "package": ZIP_ONLY}, result.zip_path)
            made = httpx.get(f"{server.url}/otadelta/{PACKAGE}/{BRANCH}/1.0/1.1", timeout=600)
            if made.status_code != 200:
                raise RuntimeError(f"no delta: {made.text}")
            device = Device(work / "device")
            try:
                for name in (PACKAGE, ZIP_ONLY):
                    body = {
                        "package": name,
                        "branch": BRANCH,
                        "remote": server.url,
                        "local": f"./{name}",
                        "version": "1.0",
                    }
                    device.job("POST", "/packages", body)
                for n in range(args.rounds):
                    order = [PACKAGE, ZIP_ONLY] if n % 2 == 0 else [ZIP_ONLY, PACKAGE]
                    took: dict[str, float] = {}
                    downloaded: dict[str, int] = {}
                    for name in order:
                        os.sync()
                        job, took[name] = device.job("POST", f"/packages/{name}/update")
                        if job["delta"] != (name == PACKAGE):
                            raise RuntimeError(f"{name}: delta {job['delta']}\n" + "\n".join(job["log"]))
                        downloaded[name] = job["downloaded"]
                        device.job("POST", f"/packages/{name}/rollback")
                    rows.append(
                        [n + 1, " then ".join("delta" if o == PACKAGE else "zip" for o in order),
                         took[PACKAGE], took[ZIP_ONLY], took[PACKAGE] / took[ZIP_ONLY],
                         downloaded[PACKAGE], downloaded[ZIP_ONLY]]
                    )  # fmt: skip
                    print(
                        f"  round {n + 1}: delta {took[PACKAGE]:.2f} s, zip {took[ZIP_ONLY]:.2f} s",
                        flush=True,
                    )
                hwm = peak_rss_mb(device.process.pid)[0]
            finally:
                device.stop()

    print()
    print_table(["case", "zip bytes", "delta bytes", "delta/zip", "make s", "make peak MiB"], size_rows)
    print(f"\none small edit: {verdict(float(size_rows[0][3]), SIZE_GOAL, higher_is_better=False)}")
    print()
    print_table(["round", "order", "delta s", "zip s", "delta/zip", "delta bytes", "zip bytes"], rows)
    ratio = median([float(row[4]) for row in rows])
    print(
        f"\nupdate from the delta / from the zip: median {ratio:.3f}: {verdict(ratio, 1.0, higher_is_better=False)}"
    )
    print(f"daemon peak RSS (VmHWM): {hwm:.0f} MiB")


if __name__ == "__main__":
    main()

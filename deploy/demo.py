"""``make demo``: a server, a few real daemons on loopback, a package and a staged rollout that pauses
itself because one device's AfterUpdate fails, so a newcomer can look at the console with live devices.

Everything it makes lives under one folder (``var/demo/`` by default), wiped at each start. Ctrl-C (or
SIGTERM) stops the daemons, then the server. ``--exit-when-paused`` stops everything as soon as the
rollout has paused (for tests and CI). A step that does not happen within a minute stops everything and
exits 1, naming the step and the log to read.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from supervise import (
    Children,
    StepError,
    box,
    child_env,
    free_port,
    port_is_free,
    prepare_folder,
    run,
    run_otakit,
    say,
    wait_for,
)

from otakit.rollout import bucket

PACKAGE = "demo-app"
BRANCH = "major"
GOOD = "1.0.0"
BAD = "1.1.0"
USER = "admin"
STEP_TIMEOUT = 60.0
POLL_INTERVAL = 10  # the daemons' own checks; the demo also asks them to check at once
MARKER = ".otakit-demo"  # a folder holding it is the demo's own, safe to wipe
# The environment variable that makes a device's AfterUpdate fail. The daemon passes its environment
# on to hooks, so exactly the daemon started with it fails; the hook prints why.
FAULT_VARIABLE = "DEMO_FAULT"
FAULT = "the display self-test fails on this unit"
# 1.1.0's AfterUpdate: fails where FAULT_VARIABLE is set, starts the app elsewhere.
BAD_AFTER = (
    f'if [ -n "${FAULT_VARIABLE}" ]; then echo "self-test failed: ${FAULT_VARIABLE}" >&2; exit 3; fi; '
    "cat version.txt"
)
GOOD_AFTER = "cat version.txt"
ROLLOUT_POLICY = {"max_failure_rate": 0.25, "min_reports": 2}


def cohort(ids: list[str]) -> tuple[list[str], float]:
    """The first phase's cohort for BAD (the two devices with the lowest buckets, or one) and its
    percentage: a whole one when that takes no third device in."""
    ranked = sorted(ids, key=lambda device: bucket(PACKAGE, BRANCH, BAD, device))
    size = min(2, len(ranked))
    last = bucket(PACKAGE, BRANCH, BAD, ranked[size - 1])
    percent: float = math.ceil((last + 1) / 100)
    if size < len(ranked) and percent * 100 > bucket(PACKAGE, BRANCH, BAD, ranked[size]):
        percent = (last + 1) / 100
    if percent >= 100:
        raise StepError(f"the cohort of {ranked[:size]} is the whole fleet; use other --devices")
    return ranked[:size], percent


class Demo:
    def __init__(self, children: Children, folder: Path, port: int, devices: int) -> None:
        self.folder = folder.resolve()
        self.port = port
        self.count = devices
        self.url = f"http://127.0.0.1:{port}"
        self.children = children
        self.upload_token = secrets.token_urlsafe(18)
        self.admin_token = secrets.token_urlsafe(18)
        self.enroll_token = secrets.token_urlsafe(18)
        self.password = f"demo-{secrets.token_hex(4)}"
        self.admin = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=30
        )
        self.ids = [f"demo-kiosk-{n}" for n in range(1, devices + 1)]
        self.first_cohort, self.first_percent = cohort(self.ids)
        self.failing = self.first_cohort[0]
        self.device_apis: dict[str, httpx.Client] = {}

    def server_env(self) -> dict[str, str]:
        return child_env(
            OTAKIT_DATABASE_URL=f"sqlite:///{self.folder / 'otakit.db'}",
            OTAKIT_FILES_DIR=str(self.folder / "otafiles"),
            OTAKIT_UPLOAD_TOKENS=self.upload_token,
            OTAKIT_ADMIN_TOKENS=self.admin_token,
            OTAKIT_ENROLL_TOKENS=self.enroll_token,
            OTAKIT_HEARTBEAT_SECONDS="2",
            OTAKIT_LOG_LEVEL="warning",
        )

    def otakit(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_otakit(*args, env=self.server_env(), cwd=self.folder, stdin=stdin, timeout=STEP_TIMEOUT)

    # 1
    def start_server(self) -> None:
        say(f"[1/6] starting the server on {self.url} (files and SQLite in {self.folder})")
        if not port_is_free(self.port):
            raise StepError(f"port {self.port} is in use on 127.0.0.1; pass --port")
        argv = [sys.executable, "-m", "otakit", "server", "--host", "127.0.0.1", "--port", str(self.port)]
        log = self.folder / "server.log"
        self.children.start("the server", argv, env=self.server_env(), cwd=self.folder, log=log)
        wait_for(
            "the server answering /test",
            lambda: httpx.get(f"{self.url}/test", timeout=1).is_success,
            self.children,
        )
        say(f"      up; log: {log}")
        say(
            f"      upload token {self.upload_token}, admin token {self.admin_token}, "
            f"enrollment token {self.enroll_token}"
        )

    # 2
    def add_user(self) -> None:
        say(f"[2/6] adding the console operator {USER!r}")
        done = self.otakit("user", "add", USER, "--password-stdin", stdin=self.password + "\n")
        if done.returncode == 0:
            say(f"      {USER} can log in")
        else:
            raise StepError(
                f"otakit user add failed ({done.returncode}): {(done.stderr or done.stdout).strip()}"
            )

    # 3
    def start_daemons(self) -> None:
        say(f"[3/6] starting {self.count} daemons")
        for n, device in enumerate(self.ids, start=1):
            folder = self.folder / "devices" / device
            folder.mkdir(parents=True)
            port = free_port()
            token = secrets.token_urlsafe(18)
            config = {
                "device": device,
                "description": f"lobby kiosk {n} on the lab bench",
                "tags": ["site-lab", "ring-beta" if n % 2 else "ring-stable"],
                "attributes": {"model": "kiosk-v2", "bench": str(n)},
                "flask": {"host": "127.0.0.1", "port": port, "debug": False},
                "token": token,
                "package": [],
                "poll_interval": POLL_INTERVAL,
                "hook_timeout": 30,
                "registry": self.url,
                "enroll_token": self.enroll_token,
            }
            (folder / "daemon.json").write_text(json.dumps(config, indent=2) + "\n")
            extra = {FAULT_VARIABLE: FAULT} if device == self.failing else {}
            self.children.start(
                device,
                [sys.executable, "-m", "otakit.daemon", "--config", str(folder / "daemon.json")],
                env=child_env(**extra),
                cwd=folder,
                log=folder / "daemon.log",
                stop_seconds=30,
            )
            self.device_apis[device] = httpx.Client(
                base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=30
            )
            note = f"  ({FAULT_VARIABLE} set: its AfterUpdate of {BAD} will fail)" if extra else ""
            say(f"      {device}: local API on 127.0.0.1:{port}, folder {folder}{note}")
        for device, api in self.device_apis.items():

            def answers(api: httpx.Client = api) -> bool:
                return api.get("/info").is_success

            wait_for(f"{device}'s local API", answers, self.children)

        def enrolled() -> bool:
            online = [d["id"] for d in self.devices() if d["online"]]
            return sorted(online) == sorted(self.ids)

        wait_for("every daemon enrolled and online", enrolled, self.children)
        say(f"      all {self.count} enrolled and online")

    def devices(self) -> list[dict[str, Any]]:
        response = self.admin.get("/api/v1/devices", params={"limit": 1000})
        response.raise_for_status()
        found: list[dict[str, Any]] = response.json()["list"]
        return found

    def runs(self, device: dict[str, Any]) -> str | None:
        return next((p["version"] for p in device["packages"] if p["package"] == PACKAGE), None)

    # 4
    def publish(self, version: str, after: str, *, hold: bool) -> None:
        source = self.folder / "publish" / f"{PACKAGE}-{version}"
        source.mkdir(parents=True)
        (source / "version.txt").write_text(f"{PACKAGE} {version} started\n")
        out = self.folder / "publish" / f"dist-{version}"
        # fmt: off
        packed = self.otakit(
            "pack", str(source), "--package", PACKAGE, "--branch", BRANCH, "--version", version,
            "--out", str(out), "--remote", f"{self.url}/", "--after", after,
            "--description", "the demo's kiosk app", "--update-info", f"{version}: demo release",
        )
        # fmt: on
        if packed.returncode != 0:
            raise StepError(f"otakit pack failed: {(packed.stderr or packed.stdout).strip()}")
        zip_path = out / f"{PACKAGE}-{BRANCH}-{version}.zip"
        content = out / "content.json"
        if not hold:
            uploaded = self.otakit(
                "upload", str(zip_path), "--content", str(content), "--server", self.url,
                "--token", self.upload_token,
            )  # fmt: skip
            if uploaded.returncode != 0:
                raise StepError(f"otakit upload failed: {(uploaded.stderr or uploaded.stdout).strip()}")
            return
        # `otakit upload` has no hold option: a held upload goes through the HTTP API.
        with open(zip_path, "rb") as file:
            response = httpx.put(
                f"{self.url}/upload",
                params={"hold": 1},
                headers={"Authorization": f"Bearer {self.upload_token}"},
                data={"content": content.read_text()},
                files={"file": (zip_path.name, file, "application/zip")},
                timeout=STEP_TIMEOUT,
            )
        if response.status_code != 200:
            raise StepError(f"the held upload of {version} failed: {response.status_code} {response.text}")

    def install_everywhere(self) -> None:
        say(f"[4/6] publishing {PACKAGE} {GOOD} (released to all) and installing it on every device")
        self.publish(GOOD, GOOD_AFTER, hold=False)
        body = {"package": PACKAGE, "branch": BRANCH, "remote": f"{self.url}/", "local": f"./{PACKAGE}"}
        jobs = {}
        for device, api in self.device_apis.items():
            response = api.post("/packages", json=body)
            if response.status_code != 202:
                raise StepError(f"{device} refused to install {PACKAGE}: {response.text}")
            jobs[device] = response.json()["job"]["id"]
        for device, job_id in jobs.items():
            api = self.device_apis[device]

            def finished(api: httpx.Client = api, job_id: str = job_id) -> dict[str, Any] | None:
                job: dict[str, Any] = api.get(f"/jobs/{job_id}").json()["job"]
                return job if job["state"] in ("succeeded", "failed", "rolled_back") else None

            job = wait_for(f"{device} installing {PACKAGE} {GOOD}", finished, self.children)
            if job["state"] != "succeeded":
                raise StepError(f"{device} could not install {PACKAGE} {GOOD}: {job['error']}")

        def everyone_runs_it() -> bool:
            return all(self.runs(device) == GOOD for device in self.devices())

        wait_for(f"every device reporting {PACKAGE} {GOOD}", everyone_runs_it, self.children)
        say(f"      every device runs {PACKAGE} {GOOD}")

    # 5
    def staged_rollout(self) -> dict[str, Any]:
        say(
            f"[5/6] publishing {PACKAGE} {BAD} held, and rolling it out in phases "
            f"{self.first_percent:g} % then 100 %"
        )
        self.publish(BAD, BAD_AFTER, hold=True)
        body = {
            "package": PACKAGE,
            "branch": BRANCH,
            "version": BAD,
            "phases": [self.first_percent, 100],
            **ROLLOUT_POLICY,
        }
        response = self.admin.post("/api/v1/rollouts", json=body)
        if response.status_code != 201:
            raise StepError(f"the rollout was refused: {response.status_code} {response.text}")
        rollout_id = response.json()["rollout"]["id"]
        say(
            f"      rollout {rollout_id}: first cohort {', '.join(self.first_cohort)}; "
            f"{self.failing}'s AfterUpdate fails; pauses when failed / max(reports, "
            f"{ROLLOUT_POLICY['min_reports']}) > {ROLLOUT_POLICY['max_failure_rate']:.1%}"
        )
        for api in self.device_apis.values():  # they would look within POLL_INTERVAL anyway
            api.post("/check")  # 409 while a check of the daemon's own runs: just as good

        def paused() -> dict[str, Any] | None:
            found: dict[str, Any] = self.admin.get(f"/api/v1/rollouts/{rollout_id}").json()["rollout"]
            if found["state"] in ("completed", "aborted"):
                raise StepError(f"rollout {rollout_id} ended {found['state']} instead of pausing: {found}")
            return found if found["state"] == "paused" and found["paused_reason"] else None

        rollout = wait_for(f"rollout {rollout_id} pausing by itself", paused, self.children)
        say(f"      rollout {rollout_id} paused by itself: {rollout['paused_reason']}")

        def settled() -> list[dict[str, Any]] | None:
            """The devices once every job has ended and every inventory says what its job left."""
            found = self.devices()
            for device in found:
                job = device["jobs"].get(PACKAGE) or {}
                if job.get("state") in ("queued", "running"):
                    return None
                if job.get("state") == "succeeded" and self.runs(device) != job.get("to_version"):
                    return None  # the inventory comes with the next heartbeat
            return found

        for device in wait_for(
            "the devices' jobs ending and their inventories arriving", settled, self.children
        ):
            job = device["jobs"].get(PACKAGE) or {}
            last = (
                f"last job {job.get('action')} to {job.get('to_version')}: {job.get('state')}" if job else ""
            )
            say(f"      {device['id']:<16} runs {self.runs(device)}  {last}")
        return rollout

    # 6
    def banner(self) -> None:
        lines = [
            f"console      http://127.0.0.1:{self.port}/console/",
            f"log in       user {USER}, password {self.password}",
            f"admin token  {self.admin_token}",
            f"try          OTAKIT_SERVER={self.url} OTAKIT_ADMIN_TOKEN={self.admin_token} "
            f"{_otakit()} devices",
            f"logs         {self.folder}/server.log, {self.folder}/devices/*/daemon.log",
            "",
            "Ctrl-C to stop",
        ]
        say("[6/6] ready")
        box(lines)

    def close(self) -> None:
        self.admin.close()
        for api in self.device_apis.values():
            api.close()


def _otakit() -> str:
    """How to call the CLI from here: the interpreter's own ``otakit``, relative when that is shorter."""
    path = Path(sys.executable).with_name("otakit")
    if not path.exists():
        return "otakit"
    relative = os.path.relpath(path)
    return relative if len(relative) < len(str(path)) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--dir", type=Path, default=Path("var/demo"), help="the demo's folder, wiped at start"
    )
    parser.add_argument("--port", type=int, default=8000, help="the server's port on 127.0.0.1")
    parser.add_argument("--devices", type=int, default=6, help="how many daemons (1 to 50)")
    parser.add_argument(
        "--exit-when-paused", action="store_true", help="stop everything once the rollout has paused"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.devices <= 50:
        parser.error("--devices must be between 1 and 50")
    children = Children()

    def steps() -> None:
        started = time.monotonic()
        prepare_folder(args.dir, MARKER, "deploy/demo.py")
        demo = Demo(children, args.dir, args.port, args.devices)
        try:
            demo.start_server()
            demo.add_user()
            demo.start_daemons()
            demo.install_everywhere()
            demo.staged_rollout()
            took = time.monotonic() - started
            say(f"      ({took:.1f} s from start to the paused rollout and a settled fleet)")
            if not args.exit_when_paused:
                demo.banner()
                children.wait_forever()
        finally:
            demo.close()

    return run("demo", children, steps, stopping="stopping the daemons and the server")


if __name__ == "__main__":
    sys.exit(main())

"""A device daemon killed at any step of a change comes back with the old version or the new one.

Real processes: an otakit server, and ``python -m otakit.daemon`` with its own config and folders. The
package is installed at 1.0.0 (V1's files); 2.0.0 has other files (V2). Its hooks are one script
(``hook.sh LABEL``) that logs each call, and that the test can hold in a ``sleep`` (a ``block-LABEL``
file), so a kill lands inside a hook for sure. Other steps are held at a file the daemon writes there: a
FIFO in place of the temp file of an atomic rewrite blocks the writer until the kill (the config's
``.daemon.json.tmp``: just before the commit; the kept version's record: just after it). A download is
held by a server that stalls mid-file, an unpack by a package of many files.

After each SIGKILL the daemon is started again on the same config, and the invariant checked
(``check_consistent``): the package folder holds exactly the files of the recorded version (names and
bytes), no hidden sibling ``.<name>.otakit-new/-trash/-swap`` is left, the journal folder is empty, the
kept previous version (``.<name>.otakit-prev`` and its record) is the other one when there is one, and
the restarted daemon's API says the same. Then a further update, rollback or removal must still work.

SIGTERM ends a step in hand before the daemon exits 0: a hook runs to its end (and the update commits);
a download is abandoned at once, nothing changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from otakit.daemon.journal import sibling
from tests.api_client import upload
from tests.cutting_server import CuttingServer
from tests.daemons import RunningDaemon, start_daemon, write_config
from tests.samples import content_for, make_zip
from tests.servers import RunningServer

pytestmark = pytest.mark.slow

V1, V2 = "1.0.0", "2.0.0"
FILES = {
    V1: {"app.txt": b"v1\n", "lib/common.txt": b"same\n", "only-v1.txt": b"old\n"},
    V2: {"app.txt": b"v2\n", "lib/common.txt": b"same\n", "lib/new.txt": b"new\n", "bin/run": b"v2 run\n"},
}
BIG_V2 = {**FILES[V2], "big.bin": os.urandom(4 * 1024 * 1024)}  # downloaded in 1 MiB chunks
MANY_FILES = {f"data/{i % 16}/{i}.txt": b"%d\n" % i for i in range(2000)}  # ~0.5 s to unpack
HOOK = """\
#!/bin/sh
# hook.sh LABEL: log the call; when fail-LABEL exists, fail; when block-LABEL exists, note this process
# in blocked-LABEL and sleep for the seconds block-LABEL holds.
dir=$(dirname "$0")
echo "$1 old=$OTAKIT_OLD_VERSION new=$OTAKIT_NEW_VERSION" >> "$dir/hooks.log"
if [ -e "$dir/fail-$1" ]; then
    exit 1
fi
if [ -e "$dir/block-$1" ]; then
    seconds=$(cat "$dir/block-$1")
    echo $$ > "$dir/.pid" && mv "$dir/.pid" "$dir/blocked-$1"
    exec sleep "$seconds"
fi
"""


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20, pause: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(pause)
    raise AssertionError(f"timed out waiting for {what}")


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder``: a file's bytes, None for a folder."""
    found: dict[str, bytes | None] = {}
    for path in folder.rglob("*"):
        found[path.relative_to(folder).as_posix()] = None if path.is_dir() else path.read_bytes()
    return found


def files_tree(files: dict[str, bytes]) -> dict[str, bytes | None]:
    expected: dict[str, bytes | None] = dict(files)
    for name in files:
        for parent in Path(name).parents[:-1]:
            expected[parent.as_posix()] = None
    return expected


class Device:
    """One package on one daemon, and the handles a test needs to steer and inspect them."""

    def __init__(self, tmp_path: Path, sqlite_server: RunningServer, pkg: str) -> None:
        self.sqlite_server = sqlite_server
        self.pkg = pkg
        self.hooks = tmp_path / "hooks"
        self.hooks.mkdir()
        self.hook = self.hooks / "hook.sh"
        self.hook.write_text(HOOK)
        self.config_path = write_config(tmp_path / "device", hook_timeout=60)
        self.folder = self.config_path.parent
        self.local = self.folder / "app"
        self.state = self.folder / ".otakit-state"
        self.files = dict(FILES)
        self.zips: dict[str, bytes] = {}
        self.daemon: RunningDaemon | None = None
        self._log_from = 0
        self._fifos: list[Path] = []

    # -- set-up --------------------------------------------------------------------------------------
    def publish(self, version: str, remote: str | None = None) -> bytes:
        data = make_zip(self.files[version])
        hook = shlex.quote(str(self.hook))
        content = content_for(
            data,
            self.pkg,
            version,
            remote=remote or self.sqlite_server.url + "/",
            BeforeUpdate=f"sh {hook} before-{version}",
            AfterUpdate=f"sh {hook} after-{version}",
        )
        response = upload(self.sqlite_server, content, data)
        assert response.status_code == 200, response.text
        self.zips[version] = data
        return data

    def move_to(self, remote: str) -> None:
        """Point the device's record of the package at another server (as an operator would)."""
        self.running().stop()
        config = json.loads(self.config_path.read_text())
        for package in config["package"]:
            package["remote"] = remote
        self.config_path.write_text(json.dumps(config))
        self.start()

    def install_v1(self, *, v2_remote: str | None = None, v2_files: dict[str, bytes] | None = None) -> None:
        """Publish both versions, start the daemon and install 1.0.0 through its API."""
        if v2_files is not None:
            self.files[V2] = v2_files
        self.publish(V1)
        self.publish(V2, v2_remote)
        self.start()
        body = {
            "package": self.pkg,
            "branch": "major",
            "remote": self.sqlite_server.url,
            "local": "app",
            "version": V1,
        }
        job = self.finish(self.post("/packages", body))
        assert job["state"] == "succeeded", job
        assert self.check_consistent() == V1
        assert self.hook_calls() == [f"before-{V1} old= new={V1}", f"after-{V1} old= new={V1}"]

    # -- the daemon ----------------------------------------------------------------------------------
    def start(self, *, wait: bool = True) -> None:
        """Start the daemon on the config; with ``wait=False``, do not wait for its API (it may be busy
        recovering)."""
        port = json.loads(self.config_path.read_text())["flask"]["port"]
        log = self.folder / f"daemon-{port}.log"
        self._log_from = log.stat().st_size if log.exists() else 0
        if wait:
            self.daemon = start_daemon(self.config_path)
            return
        with open(log, "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "otakit.daemon", "--config", str(self.config_path)],
                cwd=self.folder,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.daemon = RunningDaemon(process, self.config_path, port, log)

    def running(self) -> RunningDaemon:
        assert self.daemon is not None
        return self.daemon

    def kill_and_restart(self, *, wait: bool = True) -> str:
        """SIGKILL the daemon, take the FIFOs away, start it again; return what it logged at start."""
        self.running().kill()
        for fifo in self._fifos:
            fifo.unlink(missing_ok=True)
        self._fifos.clear()
        self.start(wait=wait)
        return self.log_since_start()

    def log_since_start(self) -> str:
        return self.running().log_text()[self._log_from :]

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.kill()
        for marker in self.hooks.glob("blocked-*"):  # a hook killed with its daemon keeps sleeping
            with contextlib.suppress(OSError, ValueError):
                pid = int(marker.read_text())
                if b"sleep" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)

    # -- the API ---------------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        with self.running().client() as client:
            return client.request(method, path, json=body)

    def post(self, path: str, body: dict[str, Any] | None = None, method: str = "POST") -> str:
        response = self.request(method, path, body)
        assert response.status_code == 202, response.text
        job_id: str = response.json()["job"]["id"]
        return job_id

    def job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self.request("GET", f"/jobs/{job_id}").json()["job"]
        return job

    def finish(self, job_id: str) -> dict[str, Any]:
        return self.running().wait_job(job_id)

    def update(self) -> str:
        return self.post(f"/packages/{self.pkg}/update")

    def rollback(self) -> str:
        return self.post(f"/packages/{self.pkg}/rollback")

    def remove(self) -> str:
        return self.post(f"/packages/{self.pkg}", method="DELETE")

    def wait_step(self, job_id: str, step: str, progress: int = 0) -> dict[str, Any]:
        def there() -> dict[str, Any] | None:
            job = self.job(job_id)
            assert job["state"] == "running", job
            return job if job["step"] == step and job["progress"] >= progress else None

        job: dict[str, Any] = wait_for(f"job {job_id} to reach {step}", there, pause=0.005)
        return job

    # -- hooks and held writes ---------------------------------------------------------------------
    def block(self, label: str, seconds: float = 30) -> None:
        (self.hooks / f"block-{label}").write_text(f"{seconds:g}")

    def unblock(self, label: str) -> None:
        (self.hooks / f"block-{label}").unlink()

    def fail(self, label: str) -> None:
        (self.hooks / f"fail-{label}").touch()

    def wait_blocked(self, label: str) -> None:
        wait_for(f"hook {label} to start", (self.hooks / f"blocked-{label}").exists)

    def hook_calls(self) -> list[str]:
        log = self.hooks / "hooks.log"
        return log.read_text().splitlines() if log.exists() else []

    def hold_write(self, path: Path) -> None:
        """Make the atomic rewrite of ``path`` block (its temp file is a FIFO nobody reads)."""
        fifo = path.with_name(f".{path.name}.tmp")
        fifo.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(fifo)
        self._fifos.append(fifo)

    # -- the invariant ---------------------------------------------------------------------------------
    def recorded(self) -> dict[str, Any] | None:
        config = json.loads(self.config_path.read_text())
        return next((p for p in config["package"] if p["package"] == self.pkg), None)

    def check_consistent(self, *, api: bool = True) -> str | None:
        """Check the device is wholly at one version; return it (None: not installed)."""
        record = self.recorded()
        version = record["version"] if record else None
        if record is None:
            assert not self.local.exists()
        else:
            assert version in self.files, record
            assert tree(self.local) == files_tree(self.files[version]), f"the files are not {version}'s"
            assert record["sha256"] == hashlib.sha256(self.zips[version]).hexdigest()
            assert record["local"] == "app"
        for tag in ("new", "trash", "swap"):
            assert not sibling(self.local, tag).exists(), f"{sibling(self.local, tag).name} was left"
        journal = self.state / "journal"
        assert not journal.exists() or sorted(p.name for p in journal.iterdir()) == []
        prev, prev_record = sibling(self.local, "prev"), self.state / "previous" / f"{self.pkg}.json"
        assert prev.exists() == prev_record.exists()
        if prev.exists():
            kept = json.loads(prev_record.read_text())["version"]
            assert kept != version
            assert tree(prev) == files_tree(self.files[kept]), f"the kept files are not {kept}'s"
        if version == V2:
            assert prev.exists()  # 2.0.0 only ever replaced 1.0.0 here
        if version is None:
            assert not prev.exists()
        if api:
            answer = self.request("GET", f"/packages/{self.pkg}")
            if record is None:
                assert answer.status_code == 404
            else:
                assert answer.json()["content.json"] == record
        return version


@pytest.fixture
def device(tmp_path: Path, sqlite_server: RunningServer, pkg: str) -> Iterator[Device]:
    dev = Device(tmp_path, sqlite_server, pkg)
    try:
        yield dev
    finally:
        dev.close()


def stalling_server(device: Device) -> CuttingServer:
    """The device's server from now on: answers /latestVersion with 2.0.0 and serves its zip, but the
    first download stops sending at 3 of its 4 MiB and holds the connection."""
    latest = httpx.get(
        f"{device.sqlite_server.url}/latestVersion", params={"package": device.pkg, "branch": "major"}
    )
    slow = CuttingServer(
        device.zips[V2],
        cut_after=3 * 1024 * 1024,
        cuts=1,
        stall=True,
        routes={"/latestVersion": latest.content},
    )
    device.move_to(slow.url)
    return slow


def interrupted(log: str, action: str, pkg: str) -> bool:
    return f"recovery: {action} of {pkg} was interrupted; restored the previous state" in log


def committed(log: str, action: str, pkg: str) -> bool:
    return f"recovery: {action} of {pkg} was committed; cleaned up" in log


def update_to_v2(device: Device) -> None:
    job = device.finish(device.update())
    assert (job["state"], job["from_version"], job["to_version"]) == ("succeeded", V1, V2), job
    assert device.check_consistent() == V2


def roll_back_to_v1(device: Device) -> None:
    job = device.finish(device.rollback())
    assert (job["state"], job["from_version"], job["to_version"]) == ("succeeded", V2, V1), job
    assert device.check_consistent() == V1


# --- SIGKILL in each step of an update ---


def test_kill_in_download(device: Device) -> None:
    """A server that stalls halfway holds the download; the partial file is resumed afterwards."""
    device.install_v1(v2_files=BIG_V2)
    with stalling_server(device) as slow:
        device.wait_step(device.update(), "download", progress=50)
        log = device.kill_and_restart()
        assert "recovery:" not in log
        assert device.check_consistent() == V1
        assert device.hook_calls()[2:] == []
        update_to_v2(device)
        device.running().kill()  # before the server stops: it waits for the daemon's open connection
    assert slow.ranges[0] is None
    resumed = slow.ranges[1]  # at what the killed daemon had received and written
    assert resumed is not None
    assert 1024 * 1024 <= int(resumed.removeprefix("bytes=").removesuffix("-")) <= 3 * 1024 * 1024
    assert device.hook_calls()[2:] == [f"before-{V2} old={V1} new={V2}", f"after-{V2} old={V1} new={V2}"]


def test_kill_in_before_update(device: Device) -> None:
    device.install_v1()
    device.block(f"before-{V2}")
    device.update()
    device.wait_blocked(f"before-{V2}")
    log = device.kill_and_restart()
    assert "recovery:" not in log
    assert device.check_consistent() == V1
    assert device.hook_calls()[2:] == [f"before-{V2} old={V1} new={V2}"]  # nothing to run again
    device.unblock(f"before-{V2}")
    update_to_v2(device)


def test_kill_while_unpacking(device: Device) -> None:
    """2000 files take a while to unpack beside the live folder; the staged half must not be left."""
    device.install_v1(v2_files={**FILES[V2], **MANY_FILES})
    staged = sibling(device.local, "new")
    device.wait_step(device.update(), "install")
    wait_for("the unpacking to begin", (staged / "data" / "0").is_dir, pause=0.002)
    device.running().kill()
    assert 0 < sum(1 for _ in staged.rglob("*.txt")) < len(FILES[V2]) + len(MANY_FILES)
    assert tree(device.local) == files_tree(FILES[V1])
    log = device.kill_and_restart()
    assert interrupted(log, "update", device.pkg), log
    assert device.check_consistent() == V1
    assert device.hook_calls()[2:] == [f"before-{V2} old={V1} new={V2}"]  # no AfterUpdate had run
    update_to_v2(device)


def test_kill_in_after_update_restores_v1_and_runs_its_after_update(device: Device) -> None:
    device.install_v1()
    device.block(f"after-{V2}")
    device.update()
    device.wait_blocked(f"after-{V2}")
    assert tree(device.local) == files_tree(FILES[V2])  # killed after the swap
    calls = len(device.hook_calls())
    log = device.kill_and_restart()
    assert interrupted(log, "update", device.pkg), log
    assert device.check_consistent() == V1
    assert device.hook_calls()[calls:] == [f"after-{V1} old={V2} new={V1}"]  # services back on 1.0.0
    device.unblock(f"after-{V2}")
    update_to_v2(device)


def test_kill_between_after_update_and_the_record(device: Device) -> None:
    """Held at the config rewrite (the commit point): AfterUpdate has run, the config still says 1.0.0."""
    device.install_v1()
    device.hold_write(device.config_path)
    job_id = device.update()
    device.wait_step(job_id, "record")
    time.sleep(0.2)
    assert (device.recorded() or {}).get("version") == V1
    assert tree(device.local) == files_tree(FILES[V2])
    log = device.kill_and_restart()
    assert interrupted(log, "update", device.pkg), log
    assert device.check_consistent() == V1
    assert device.hook_calls()[2:] == [
        f"before-{V2} old={V1} new={V2}",
        f"after-{V2} old={V1} new={V2}",
        f"after-{V1} old={V2} new={V1}",
    ]
    update_to_v2(device)


def test_kill_after_the_record_before_cleanup(device: Device) -> None:
    """Held at the kept version's record, written after the commit: the restart finishes, not undoes."""
    device.install_v1()
    device.hold_write(device.state / "previous" / f"{device.pkg}.json")
    device.update()
    wait_for("the config to record 2.0.0", lambda: (device.recorded() or {}).get("version") == V2)
    time.sleep(0.1)
    assert (device.state / "journal" / f"{device.pkg}.json").exists()
    log = device.kill_and_restart()
    assert committed(log, "update", device.pkg), log
    assert device.check_consistent() == V2
    assert device.hook_calls()[4:] == []  # committed: no hook runs again
    roll_back_to_v1(device)


@pytest.mark.parametrize("delay", [0, 0.002, 0.004, 0.008])
def test_kill_shortly_after_after_update(device: Device, delay: float) -> None:
    """Timed kills once AfterUpdate has run: any outcome is fine, as long as it is whole."""
    device.install_v1()
    device.update()
    wait_for("AfterUpdate of 2.0.0", lambda: len(device.hook_calls()) >= 4, pause=0.001)
    time.sleep(delay)
    log = device.kill_and_restart()
    version = device.check_consistent()
    if interrupted(log, "update", device.pkg):
        assert version == V1
        assert device.hook_calls()[4:] == [f"after-{V1} old={V2} new={V1}"]
    else:
        assert version == V2
        assert device.hook_calls()[4:] == []
        roll_back_to_v1(device)
    update_to_v2(device)


def test_kill_in_after_update_of_a_first_install_leaves_nothing(device: Device) -> None:
    device.publish(V1)
    device.start()
    device.block(f"after-{V1}")
    body = {"package": device.pkg, "branch": "major", "remote": device.sqlite_server.url, "local": "app"}
    device.post("/packages", body)
    device.wait_blocked(f"after-{V1}")
    assert tree(device.local) == files_tree(FILES[V1])
    log = device.kill_and_restart()
    assert interrupted(log, "install", device.pkg), log
    assert device.check_consistent() is None
    assert device.hook_calls() == [f"before-{V1} old= new={V1}", f"after-{V1} old= new={V1}"]
    device.unblock(f"after-{V1}")
    job = device.finish(device.post("/packages", body))
    assert job["state"] == "succeeded", job
    assert device.check_consistent() == V1


def test_kill_in_the_restored_after_update_of_an_automatic_rollback(device: Device) -> None:
    """2.0.0's AfterUpdate fails: its files are swapped back and 1.0.0's AfterUpdate runs; killed there."""
    device.install_v1()
    device.fail(f"after-{V2}")
    device.update()
    device.block(f"after-{V1}")
    device.wait_blocked(f"after-{V1}")
    assert tree(device.local) == files_tree(FILES[V1])
    device.unblock(f"after-{V1}")
    log = device.kill_and_restart()
    assert interrupted(log, "update", device.pkg), log
    assert device.check_consistent() == V1
    assert device.hook_calls()[2:] == [
        f"before-{V2} old={V1} new={V2}",
        f"after-{V2} old={V1} new={V2}",
        f"after-{V1} old={V2} new={V1}",
        f"after-{V1} old={V2} new={V1}",  # again, by the restarted daemon
    ]
    (device.hooks / f"fail-after-{V2}").unlink()
    update_to_v2(device)


def test_kill_during_recovery_is_recovered_by_the_next_start(device: Device) -> None:
    """Killed in 2.0.0's AfterUpdate, then again while the restart runs 1.0.0's AfterUpdate."""
    device.install_v1()
    device.block(f"after-{V2}")
    device.update()
    device.wait_blocked(f"after-{V2}")
    device.block(f"after-{V1}")
    device.kill_and_restart(wait=False)
    device.wait_blocked(f"after-{V1}")
    assert tree(device.local) == files_tree(FILES[V1])  # the files are back; the journal is not done
    assert (device.state / "journal" / f"{device.pkg}.json").exists()
    device.unblock(f"after-{V1}")
    log = device.kill_and_restart()
    assert interrupted(log, "update", device.pkg), log
    assert device.check_consistent() == V1
    assert device.hook_calls()[4:] == [f"after-{V1} old={V2} new={V1}"] * 2
    device.unblock(f"after-{V2}")
    update_to_v2(device)


# --- SIGKILL during a rollback and a removal ---


def test_kill_during_rollback_keeps_v2(device: Device) -> None:
    device.install_v1()
    update_to_v2(device)
    device.block(f"after-{V1}")
    device.rollback()
    device.wait_blocked(f"after-{V1}")
    assert tree(device.local) == files_tree(FILES[V1])
    calls = len(device.hook_calls())
    log = device.kill_and_restart()
    assert interrupted(log, "rollback", device.pkg), log
    assert device.check_consistent() == V2
    assert device.hook_calls()[calls:] == [f"after-{V2} old={V1} new={V2}"]
    device.unblock(f"after-{V1}")
    roll_back_to_v1(device)
    update_to_v2(device)


def test_kill_during_remove_keeps_the_package(device: Device) -> None:
    device.install_v1()
    update_to_v2(device)
    device.hold_write(device.config_path)
    device.wait_step(device.remove(), "record")
    time.sleep(0.2)
    assert not device.local.exists()
    log = device.kill_and_restart()
    assert interrupted(log, "remove", device.pkg), log
    assert device.check_consistent() == V2
    roll_back_to_v1(device)
    job = device.finish(device.remove())
    assert job["state"] == "succeeded", job
    assert device.check_consistent() is None


# --- SIGTERM ---


def test_sigterm_in_after_update_finishes_the_update_and_exits_0(device: Device) -> None:
    device.install_v1()
    device.block(f"after-{V2}", 2)
    job_id = device.update()
    device.wait_blocked(f"after-{V2}")
    code = device.running().stop()
    assert device.check_consistent(api=False) == V2
    assert f"job {job_id} (update {device.pkg}): {device.pkg} {V2} installed" in device.log_since_start()
    assert code == 0, device.log_since_start()


def test_sigterm_while_downloading_exits_0_at_once_and_changes_nothing(device: Device) -> None:
    device.install_v1(v2_files=BIG_V2)
    with stalling_server(device):
        job_id = device.update()
        device.wait_step(job_id, "download", progress=50)
        started = time.monotonic()
        code = device.running().stop()
        assert time.monotonic() - started < 5
    assert device.check_consistent(api=False) == V1
    assert device.hook_calls()[2:] == []
    assert (
        f"job {job_id} (update {device.pkg}): cancelled: the daemon is stopping" in device.log_since_start()
    )
    assert code == 0, device.log_since_start()

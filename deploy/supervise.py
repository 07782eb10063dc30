"""What deploy/demo.py and deploy/cluster/run.py share: starting child processes, waiting for them to
answer, and stopping every one of them (no orphans), in a folder of their own.

Each child runs in a process group of its own, so a Ctrl-C at the terminal reaches the script only,
which then stops its children, the last started first, and kills whatever a child left in its group.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import pymysql

from otakit.server.db.urls import mysql_params

__all__ = [
    "Child",
    "Children",
    "StepError",
    "box",
    "child_env",
    "free_port",
    "mysql_connect",
    "otakit_argv",
    "port_is_free",
    "prepare_folder",
    "run",
    "run_otakit",
    "say",
    "wait_for",
]

T = TypeVar("T")


class StepError(Exception):
    """A step that failed or did not happen in time; the message says which and where to look."""


def say(line: str) -> None:
    print(line, flush=True)


def box(lines: list[str]) -> None:
    """Print ``lines`` in a frame: what a newcomer needs, once everything is up."""
    width = max(len(line) for line in lines)
    say("+" + "-" * (width + 2) + "+")
    for line in lines:
        say(f"| {line:<{width}} |")
    say("+" + "-" * (width + 2) + "+")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is no owner
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    stop_signal: int = signal.SIGTERM
    stop_seconds: float = 15.0

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)

    def stop(self) -> None:
        """Ask it to stop, kill it after ``stop_seconds``, then kill what is left in its group (nginx's
        workers, a hook's child)."""
        self.signal(self.stop_signal)
        try:
            self.process.wait(self.stop_seconds)
        except subprocess.TimeoutExpired:
            say(f"  {self.name} did not stop within {self.stop_seconds:g} s; killing it")
            self.signal(signal.SIGKILL)
            self.process.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


class Children:
    """The processes a script started, in the order it started them."""

    def __init__(self) -> None:
        self.started: list[Child] = []

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: Path,
        log: Path,
        stop_signal: int = signal.SIGTERM,
        stop_seconds: float = 15.0,
    ) -> Child:
        with open(log, "ab") as out:
            process = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        child = Child(name, process, log, stop_signal, stop_seconds)
        self.started.append(child)
        return child

    def check_alive(self) -> None:
        """``StepError`` as soon as a child has exited, with the end of its log."""
        for child in self.started:
            code = child.process.poll()
            if code is not None:
                raise StepError(f"{child.name} exited with status {code}; {child.log}:\n{child.tail()}")

    def wait_forever(self) -> None:
        """Until Ctrl-C (or SIGTERM, when the script maps it to KeyboardInterrupt) or a child dies."""
        while True:
            self.check_alive()
            time.sleep(1)

    def stop_all(self) -> None:
        """Stop every child, the last started first (the daemons before their server, nginx before the
        servers behind it)."""
        for child in reversed(self.started):
            child.stop()


def wait_for(what: str, probe: Callable[[], T | None], children: Children, timeout: float = 60.0) -> T:
    """Call ``probe`` until it returns something other than None or False; ``StepError`` after
    ``timeout`` seconds, or as soon as a child has died. A connection refused counts as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        children.check_alive()
        try:
            found = probe()
        except httpx.TransportError:
            found = None
        if found is not None and found is not False:
            return found
        if time.monotonic() > deadline:
            raise StepError(f"{what}: not within {timeout:g} s")
        time.sleep(0.1)


def mysql_connect(url: str, *, database: bool = True) -> pymysql.connections.Connection:
    """A plain, autocommitting pymysql connection for ``url`` (to its database, or to none)."""
    params = mysql_params(url)
    extra = {"unix_socket": params["unix_socket"]} if "unix_socket" in params else {}
    return pymysql.connect(
        host=params["host"],
        port=params["port"],
        user=params["user"],
        password=params["password"],
        database=params["db"] if database else None,
        charset="utf8mb4",
        connect_timeout=5,
        autocommit=True,
        **extra,
    )


def otakit_argv() -> list[str]:
    """This interpreter's ``otakit`` (the venv's), or ``python -m otakit`` without one."""
    path = Path(sys.executable).with_name("otakit")
    return [str(path)] if path.exists() else [sys.executable, "-m", "otakit"]


def run_otakit(
    *args: str, env: dict[str, str], cwd: Path, stdin: str | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """One ``otakit`` command to its end, its output captured (the caller reads the exit status)."""
    return subprocess.run(
        [*otakit_argv(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child: ours without any OTAKIT_* setting of the user's, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTAKIT_")}
    return {**env, **extra}


def prepare_folder(folder: Path, marker: str, made_by: str) -> None:
    """Wipe and create ``folder``; refuse one that holds files but not ``marker`` (not ours)."""
    if folder.exists():
        if any(folder.iterdir()) and not (folder / marker).exists():
            raise StepError(
                f"{folder} exists and is not {made_by}'s folder (no {marker}); choose another --dir"
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / marker).write_text(f"made by {made_by}; wiped at its next start\n")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(name: str, children: Children, work: Callable[[], None], *, stopping: str) -> int:
    """Run ``work`` (a script's steps); however it ends (done, Ctrl-C, SIGTERM, SIGHUP, a ``StepError``,
    a bug), stop every child. The exit status: 1 after a ``StepError``, printed as one line."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    code = 0
    try:
        work()
    except KeyboardInterrupt:
        say("")
    except StepError as error:
        say(f"{name}: error: {error}")
        code = 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not leave children behind
        if children.started:
            say(stopping)
            children.stop_all()
            say("stopped")
    return code

"""Running a command on a pseudo-terminal, as a person at a terminal would, and reading what it drew."""

from __future__ import annotations

import os
import pty
import select
import subprocess

__all__ = ["on_a_terminal"]


def on_a_terminal(
    argv: list[str], env: dict[str, str], answers: list[str] | None = None, quiet_s: float = 60
) -> tuple[int, str]:
    """Run ``argv`` on a terminal; each of ``answers`` is typed when a prompt (``…: ``) appears. A
    command silent for ``quiet_s`` (waiting for input nobody types) is killed."""
    pending = list(answers or [])
    controller, terminal = pty.openpty()
    process = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal, env=env)
    os.close(terminal)
    output = b""
    try:
        while True:
            if not select.select([controller], [], [], quiet_s)[0]:
                process.kill()
                break
            try:
                piece = os.read(controller, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not piece:
                break
            output += piece
            # A hidden prompt's ": " comes once echo is off (getpass flushes what was typed before).
            if pending and output.endswith(b": "):
                os.write(controller, pending.pop(0).encode() + b"\n")
    finally:
        os.close(controller)
    return process.wait(60), output.decode(errors="replace")

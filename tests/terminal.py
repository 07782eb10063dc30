"""Running a command on a pseudo-terminal, as a person at a terminal would, and reading what it drew."""

from __future__ import annotations

import os
import pty
import subprocess

__all__ = ["on_a_terminal"]


def on_a_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    controller, terminal = pty.openpty()
    process = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal, env=env)
    os.close(terminal)
    output = b""
    try:
        while True:
            try:
                piece = os.read(controller, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not piece:
                break
            output += piece
    finally:
        os.close(controller)
    return process.wait(60), output.decode(errors="replace")

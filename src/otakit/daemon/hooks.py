"""Running a package's BeforeUpdate/AfterUpdate command: through the shell, with a timeout, its output
captured line by line into the job's log."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Mapping
from pathlib import Path

from otakit.errors import OtakitError

__all__ = ["HookError", "run_hook"]


class HookError(OtakitError):
    pass


async def run_hook(
    name: str,
    command: str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    time_limit: float,
    log: Callable[[str], None],
) -> None:
    """Run ``command`` with ``sh -c``; raise HookError on a non-zero exit or after ``time_limit`` seconds.

    The command runs in its own process group, so a timeout kills everything it started.
    """
    if not command.strip():
        return
    log(f"{name}: $ {command}")
    process = await asyncio.create_subprocess_shell(
        command,
        cwd=cwd,
        env={**os.environ, **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert process.stdout is not None

    async def pump() -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            log(f"{name}: {line.decode('utf-8', 'replace').rstrip()}")

    reader = asyncio.create_task(pump())
    try:
        await asyncio.wait_for(process.wait(), time_limit)
    except TimeoutError:
        _kill_group(process.pid)
        await process.wait()
        raise HookError(f"{name} timed out after {time_limit:g} s") from None
    except BaseException:
        _kill_group(process.pid)
        raise
    finally:
        # A command may leave a background process holding its output open (`./service &`): read
        # what is there, then stop listening rather than wait for that process to end.
        try:
            await asyncio.wait_for(asyncio.shield(reader), 1.0)
        except TimeoutError:
            reader.cancel()
    if process.returncode != 0:
        raise HookError(f"{name} failed with exit status {process.returncode}")
    log(f"{name}: done")


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)

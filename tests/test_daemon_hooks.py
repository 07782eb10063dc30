from __future__ import annotations

import time
from pathlib import Path

import pytest

from otakit.daemon.hooks import HookError, run_hook

pytestmark = pytest.mark.anyio


async def test_hook_runs_in_cwd_with_env_and_output_logged(tmp_path: Path) -> None:
    lines: list[str] = []
    await run_hook(
        "AfterUpdate",
        'echo "$OTAKIT_NEW_VERSION in $PWD"; echo err >&2',
        cwd=tmp_path,
        env={"OTAKIT_NEW_VERSION": "1.2"},
        time_limit=10,
        log=lines.append,
    )
    assert f"AfterUpdate: 1.2 in {tmp_path}" in lines
    assert "AfterUpdate: err" in lines  # stderr is captured too


async def test_empty_command_does_nothing(tmp_path: Path) -> None:
    lines: list[str] = []
    await run_hook("BeforeUpdate", "  ", cwd=tmp_path, env={}, time_limit=1, log=lines.append)
    assert lines == []


async def test_non_zero_exit_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(HookError, match="exit status 3"):
        await run_hook("BeforeUpdate", "exit 3", cwd=tmp_path, env={}, time_limit=10, log=lambda _: None)


async def test_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    started = time.monotonic()
    with pytest.raises(HookError, match=r"timed out after 0\.5 s"):
        await run_hook(
            "AfterUpdate",
            f"sleep 30 & echo $! > {marker}; wait",
            cwd=tmp_path,
            env={},
            time_limit=0.5,
            log=lambda _: None,
        )
    assert time.monotonic() - started < 10
    child = int(marker.read_text())
    time.sleep(0.2)
    assert (
        not Path(f"/proc/{child}").exists() or "zombie" in Path(f"/proc/{child}/status").read_text().lower()
    )


async def test_a_background_service_does_not_hold_the_hook(tmp_path: Path) -> None:
    started = time.monotonic()
    await run_hook(
        "AfterUpdate",
        "sleep 20 > /dev/null 2>&1 & echo started",
        cwd=tmp_path,
        env={},
        time_limit=10,
        log=lambda _: None,
    )
    assert time.monotonic() - started < 5

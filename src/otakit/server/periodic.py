"""A coroutine run every few seconds in the background of one server process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from otakit.errors import UnavailableError

__all__ = ["Periodic"]

log = logging.getLogger("otakit.server")


class Periodic:
    """Runs ``work`` every ``interval`` seconds from ``start`` to ``stop``; an outage of the database
    is logged and tried again next time."""

    def __init__(self, name: str, interval: float, work: Callable[[], Awaitable[object]]) -> None:
        self.name = name
        self.interval = interval
        self.work = work
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"otakit-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.work()
            except UnavailableError as exc:
                log.warning("%s: %s", self.name, exc)

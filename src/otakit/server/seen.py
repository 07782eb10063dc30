"""Heartbeats' ``last_seen``, kept in memory and written in batches: the fleet's hot path.

A heartbeat only marks its device seen; thousands a second would be thousands of writes. Each process
keeps the newest time per device and ``flush`` writes them all in one transaction (the app does every
2 s, and once more at shutdown). What a crash loses is a few seconds of ``last_seen``, nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from otakit.errors import UnavailableError

__all__ = ["SeenBuffer"]

log = logging.getLogger("otakit.server")


class SeenBuffer:
    def __init__(self, write: Callable[[Mapping[str, float]], Awaitable[None]]) -> None:
        self._write = write
        self._pending: dict[str, float] = {}

    def mark(self, device_id: str, at: float) -> None:
        if self._pending.get(device_id, 0.0) < at:
            self._pending[device_id] = at

    def get(self, device_id: str) -> float | None:
        """The time of a heartbeat not written yet, if any."""
        return self._pending.get(device_id)

    def forget(self, device_id: str) -> None:
        self._pending.pop(device_id, None)

    async def flush(self) -> None:
        batch, self._pending = self._pending, {}
        if not batch:
            return
        try:
            await self._write(batch)
        except UnavailableError as exc:  # keep them for the next try; newer marks win
            log.warning("could not write %d heartbeat(s): %s", len(batch), exc)
            for device_id, at in batch.items():
                self.mark(device_id, at)

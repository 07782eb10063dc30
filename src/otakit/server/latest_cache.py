"""Per-process caches that are never stale after a change anywhere: answers of ``/latestVersion``, and
what the fleet's hot paths read (device tokens, the released row, the active rollout, a device's view).

Every entry remembers the stamp it was made under: the database's change counter as this process last
read it (``repository.changes``). Every commit that changes what they hold (an upload, a release, a
rollout's change, a device deleted, accepted or pinned), in any process on the database, bumps it,
which empties the cache at the next request: at once in the process that made the change, within
``REFRESH_SECONDS`` in the others. Checking costs nothing (no I/O). ``max_age`` bounds what a process
could serve if another died between its commit and its bump (and how late a device's inventory may be
seen); 0 turns the cache off.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["LatestCache", "StampCache"]

_V = TypeVar("_V")


class StampCache(Generic[_V]):
    def __init__(self, max_entries: int = 10_000, max_age: float = 5.0) -> None:
        self.max_entries = max_entries
        self.max_age = max_age
        self._stamp: object = None
        self._entries: OrderedDict[Hashable, tuple[float, _V]] = OrderedDict()

    def lookup(self, key: Hashable, stamp: object) -> tuple[bool, _V | None]:
        """``(True, value)`` for a fresh entry (its value may be None), else ``(False, None)``."""
        if stamp != self._stamp:
            self._entries.clear()
            self._stamp = stamp
            return False, None
        entry = self._entries.get(key)
        if entry is None or time.monotonic() - entry[0] > self.max_age:
            return False, None
        self._entries.move_to_end(key)
        return True, entry[1]

    def keep(self, key: Hashable, stamp: object, value: _V) -> None:
        if stamp != self._stamp or self.max_age <= 0:
            return  # made under a stamp that has changed since: do not keep it
        self._entries[key] = (time.monotonic(), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class LatestCache(StampCache[tuple[bytes, str]]):
    """``/latestVersion`` answers: ``(body, etag)`` per ``(package, branch)``."""

    def get(self, key: tuple[str, str], stamp: object) -> tuple[bytes, str] | None:
        return self.lookup(key, stamp)[1]

    def put(self, key: tuple[str, str], stamp: object, body: bytes, etag: str) -> None:
        self.keep(key, stamp, (body, etag))

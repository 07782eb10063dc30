"""A per-process cache of ``/latestVersion`` answers that is never stale after an upload.

Every entry remembers the file store's stamp it was made under; every commit (in any process sharing
the store) replaces the stamp, which empties the cache at the next request. Checking costs one
``stat``. ``max_age`` bounds what a process could serve if another died between its database commit
and its stamp change; 0 turns the cache off.
"""

from __future__ import annotations

import time
from collections import OrderedDict

__all__ = ["LatestCache"]


class LatestCache:
    def __init__(self, max_entries: int = 10_000, max_age: float = 5.0) -> None:
        self.max_entries = max_entries
        self.max_age = max_age
        self._stamp: object = None
        self._entries: OrderedDict[tuple[str, str], tuple[float, bytes, str]] = OrderedDict()

    def get(self, key: tuple[str, str], stamp: object) -> tuple[bytes, str] | None:
        if stamp != self._stamp:
            self._entries.clear()
            self._stamp = stamp
            return None
        entry = self._entries.get(key)
        if entry is None or time.monotonic() - entry[0] > self.max_age:
            return None
        self._entries.move_to_end(key)
        return entry[1], entry[2]

    def put(self, key: tuple[str, str], stamp: object, body: bytes, etag: str) -> None:
        if stamp != self._stamp or self.max_age <= 0:
            return  # made under a stamp that has changed since: do not keep it
        self._entries[key] = (time.monotonic(), body, etag)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

"""The daemon's durable outbox: job reports waiting for the fleet server, oldest first.

One file per report in a folder, named by a sequence number (``00000000000000000042.json``), each
written whole (temp file, fsync, rename, fsync the folder), so a crash loses none that ``put`` returned
for and never leaves half of one. A report leaves the outbox only when ``remove`` is called for it — after
the server took it. The outbox holds at most ``limit`` reports: a ``put`` beyond that drops the oldest and
logs how many.

Every method blocks on the disk: call it in a thread. One lock serialises them, so a sender thread and
a writer thread may share one outbox.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections import deque
from pathlib import Path
from typing import Any

from otakit.fsutil import fsync_dir, write_atomically

__all__ = ["Outbox"]

log = logging.getLogger("otakit.daemon")

_NAME_RE = re.compile(r"(\d{20})\.json")


class Outbox:
    def __init__(self, folder: Path, limit: int = 1000) -> None:
        if limit < 1:
            raise ValueError("an outbox holds at least one report")
        self.folder = folder
        self.limit = limit
        self._lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        found = sorted(int(match[1]) for name in os.listdir(folder) if (match := _NAME_RE.fullmatch(name)))
        self._seqs: deque[int] = deque(found)
        self._next = (found[-1] + 1) if found else 1
        for name in os.listdir(folder):
            if name.startswith("."):  # a temp file a crash left before its rename: never put
                (folder / name).unlink(missing_ok=True)

    def __len__(self) -> int:
        return len(self._seqs)

    def _path(self, seq: int) -> Path:
        return self.folder / f"{seq:020d}.json"

    def put(self, reports: list[dict[str, Any]]) -> int:
        """Append ``reports`` (durable on return) in their order; return how many old ones were dropped."""
        with self._lock:
            for report in reports:
                seq = self._next
                data = json.dumps(report, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
                write_atomically(self._path(seq), data, 0o600)
                self._seqs.append(seq)
                self._next += 1
            dropped = 0
            while len(self._seqs) > self.limit:
                self._path(self._seqs.popleft()).unlink(missing_ok=True)
                dropped += 1
            if dropped:
                fsync_dir(self.folder)
        if dropped:
            log.warning(
                "fleet outbox %s is full (%d reports): dropped the %d oldest undelivered report(s)",
                self.folder,
                self.limit,
                dropped,
            )
        return dropped

    def peek(self) -> tuple[int, dict[str, Any]] | None:
        """The oldest report and its sequence number, or None when the outbox is empty.

        A file that cannot be read as a JSON object (the disk gave way) is logged and dropped."""
        with self._lock:
            while self._seqs:
                seq = self._seqs[0]
                try:
                    report = json.loads(self._path(seq).read_bytes())
                except (OSError, ValueError) as exc:
                    report = exc
                if isinstance(report, dict):
                    return seq, report
                log.error("fleet outbox: dropping unreadable report %s (%s)", self._path(seq), report)
                self._seqs.popleft()
                self._path(seq).unlink(missing_ok=True)
            return None

    def remove(self, seq: int) -> None:
        """Forget report ``seq`` (delivered, or never deliverable). Removing one already gone is a no-op."""
        with self._lock:
            try:
                self._seqs.remove(seq)
            except ValueError:
                return
            self._path(seq).unlink(missing_ok=True)
            fsync_dir(self.folder)

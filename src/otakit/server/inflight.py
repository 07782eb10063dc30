"""This process's uploads in flight, recorded in the database so that any server process can tell a dead
upload from a slow one (see ``repository.uploads``).

Each process has an *owner* name: host, kernel boot, pid and the pid's start time. A process renews the
leases of its entries in the background; another process takes an entry over when its lease ran out, or
at once when the owner ran on this same host and boot and that process is gone (a restart after a kill
recovers without waiting for the lease).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from otakit.server.repository import Repository
from otakit.server.repository.versions import Claim

__all__ = ["InFlight", "Owner", "this_owner"]

DEFAULT_LEASE_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Owner:
    host: str
    boot: str
    pid: int
    started: str  # the pid's start time in clock ticks since boot (/proc/<pid>/stat field 22)

    def __str__(self) -> str:
        return f"{self.host}/{self.boot}/{self.pid}/{self.started}"

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        parts = text.rsplit("/", 3)
        if len(parts) != 4 or not parts[2].isdigit():
            return None
        return cls(parts[0], parts[1], int(parts[2]), parts[3])

    def is_dead(self) -> bool:
        """True only when this owner certainly ran here (same host and boot) and is gone; False when it
        lives or cannot be told from here (another host: its lease decides)."""
        here = this_owner()
        if (self.host, self.boot) != (here.host, here.boot) or not self.boot:
            return False
        return _start_time(self.pid) != self.started


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: fields after the last ")" are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[19]  # field 22 of the whole line


def this_owner() -> Owner:
    pid = os.getpid()
    host = socket.gethostname().replace("/", "_")[:100] or "localhost"
    return Owner(host, _boot_id(), pid, _start_time(pid) or uuid.uuid4().hex[:8])


class InFlight:
    """The uploads this process has in flight, and their leases."""

    def __init__(self, repo: Repository, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        self.repo = repo
        self.owner = str(this_owner())
        self.lease_seconds = lease_seconds
        self._held: set[str] = set()

    def lease_until(self) -> float:
        return time.time() + self.lease_seconds

    @property
    def renew_every(self) -> float:
        return max(self.lease_seconds / 4, 0.2)

    async def begin(self) -> str:
        """A new upload id, recorded before any of its bytes is stored."""
        upload_id = uuid.uuid4().hex
        self._held.add(upload_id)
        try:
            await self.repo.uploads.begin(upload_id, self.owner, self.lease_until(), time.time())
        except BaseException:
            self._held.discard(upload_id)
            raise
        return upload_id

    async def name(self, upload_id: str, name: str, branch: str, version: str) -> None:
        await self.repo.uploads.name(upload_id, self.owner, name, branch, version)

    async def fence(self, claim: Claim, upload_id: str) -> None:
        """In ``claim``'s transaction: the entry is still ours, or ``UnavailableError``."""
        await self.repo.uploads.fence(claim.transaction, upload_id, self.owner, self.lease_until())

    async def end(self, upload_id: str) -> None:
        """Remove the entry: nothing of the upload is left to recover."""
        await self.repo.uploads.end(upload_id)
        self._held.discard(upload_id)

    def holds(self, upload_id: str) -> bool:
        """Whether this process is at work on the entry (an abandoned one is recovery's, even here)."""
        return upload_id in self._held

    def abandon(self, upload_id: str) -> None:
        """Stop renewing the entry; recovery (here or elsewhere) finishes it once its lease ran out."""
        self._held.discard(upload_id)

    def adopt(self, upload_id: str) -> None:
        """Renew an entry this process took over from a dead owner while it recovers it."""
        self._held.add(upload_id)

    async def renew(self) -> None:
        if self._held:
            await self.repo.uploads.renew(sorted(self._held), self.owner, self.lease_until())

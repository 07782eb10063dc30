"""Changing a package's files, one change at a time, journaled: the steps every source of a package
shares (a downloaded zip, a delta, an offline bundle).

Each change of a package's files is a short list of renames journaled before they run (``journal``), so
that a daemon killed at any step comes back with the old version or the new one: ``recover`` at start
finishes what was committed (the config names the new version) and undoes the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from otakit.content import Content, parse_content
from otakit.daemon.config_store import ConfigStore
from otakit.daemon.hooks import HookError, run_hook
from otakit.daemon.jobs import Job
from otakit.daemon.journal import Journal, Swap, remove_tree, sibling
from otakit.daemon.unpack import inspect, unpack
from otakit.errors import NotFoundError
from otakit.fsutil import write_atomically
from otakit.signing import parse_public_key, verify_content

__all__ = ["Installer", "Planned"]

log = logging.getLogger("otakit.daemon")
_KEEP_PARTIAL_S = 7 * 24 * 3600


@dataclass(frozen=True)
class Planned:
    """One package to install: the content.json as the server gave it, the server it comes from and
    the folder it goes to (both recorded with it: the device, not the publisher, decides them)."""

    content: Content
    remote: str
    local: str

    def recorded(self) -> Content:
        """The content as received, with the device's server and folder where they differ from it."""
        changes: dict[str, str] = {}
        if self.content.remote.rstrip("/") != self.remote.rstrip("/"):
            changes["remote"] = self.remote
        if self.content.local != self.local:
            changes["local"] = self.local
        return parse_content({**self.content.raw, **changes}) if changes else self.content


class Installer:
    """The device's packages and the one lock under which their files change."""

    def __init__(self, store: ConfigStore) -> None:
        self.store = store
        # One change of files at a time: a dependency installed for one job is a package of its own.
        self._changing = asyncio.Lock()
        self.trusted = [parse_public_key(line) for line in store.config.trusted_keys]
        state = store.state_dir
        self.journal = Journal(state / "journal")
        self.downloads = state / "downloads"
        self.bundles = state / "bundles"  # bundles received through the API, until their job ends
        self.previous = state / "previous"

    def installed(self, name: str) -> Content:
        content = self.store.config.installed(name)
        if content is None:
            raise NotFoundError(f"{name} is not installed")
        return content

    def previous_of(self, name: str) -> Content | None:
        """The kept previous version, when its files are there to roll back to."""
        path = self.previous / f"{name}.json"
        installed = self.installed(name)
        if not path.is_file() or not sibling(self.store.local_path(installed), "prev").is_dir():
            return None
        return parse_content(path.read_bytes(), f"record of {name}'s previous version")

    def verify(self, content: Content) -> None:
        """With ``trusted_keys``, a package (dependency included) must carry a valid signature by one
        of them; checked before anything is downloaded or run."""
        if self.trusted:
            verify_content(content.raw, self.trusted)

    @contextlib.asynccontextmanager
    async def exclusive(self, job: Job) -> AsyncIterator[None]:
        if self._changing.locked():
            job.step = "waiting"
            job.say("waiting for another job to finish changing files")
        async with self._changing:
            yield

    def _hook_env(self, content: Content, old: Content | None, local: Path) -> dict[str, str]:
        return {
            "OTAKIT_PACKAGE": content.package,
            "OTAKIT_BRANCH": content.branch,
            "OTAKIT_OLD_VERSION": old.version if old else "",
            "OTAKIT_NEW_VERSION": content.version,
            "OTAKIT_LOCAL": str(local),
        }

    async def _hook(
        self, job: Job, name: str, command: str, content: Content, old: Content | None, local: Path
    ) -> None:
        cwd = local if local.is_dir() else local.parent
        cwd.mkdir(parents=True, exist_ok=True)
        await run_hook(
            name,
            command,
            cwd=cwd,
            env=self._hook_env(content, old, local),
            time_limit=self.store.config.hook_timeout,
            log=job.say,
        )

    async def _begin_swap(
        self, action: str, name: str, local: Path, installed: Content | None, recorded: Content
    ) -> Swap:
        """Journal the renames that put the staging folder in place, before the staging folder is made,
        so that a daemon killed while filling it has it removed at the next start."""
        stage, prev, trash = sibling(local, "new"), sibling(local, "prev"), sibling(local, "trash")
        for leftover in (stage, trash):
            await anyio.to_thread.run_sync(remove_tree, leftover)
        local.parent.mkdir(parents=True, exist_ok=True)
        renames = [(prev, trash)] if prev.exists() else []
        renames += [(local, prev)] if local.exists() else []
        renames.append((stage, local))
        return self.journal.begin(
            action, name, local, installed.raw if installed else None, recorded.raw, renames
        )

    async def install_zip(
        self,
        job: Job,
        zip_path: Path,
        action: str,
        content: Content,
        installed: Content | None,
        recorded: Content,
        local: Path,
    ) -> None:
        """Check the verified zip's entries, then BeforeUpdate → unpack and swap → AfterUpdate → record."""
        name = content.package
        job.step = "inspect"
        listing = await anyio.to_thread.run_sync(inspect, zip_path)
        job.say(f"checked {len(listing.entries)} entries ({listing.files} file(s), {listing.size} bytes)")

        job.step = "BeforeUpdate"
        await self._hook(job, "BeforeUpdate", content.before_update, content, installed, local)

        job.step = "install"
        swap = await self._begin_swap(action, name, local, installed, recorded)
        stage = sibling(local, "new")
        try:
            files = await anyio.to_thread.run_sync(unpack, zip_path, stage)
        except BaseException:
            await self._abandon(swap)
            raise
        job.say(f"unpacked {files} file(s)")
        await self._swap_in(job, swap, content, installed, recorded, local)

    async def _abandon(self, swap: Swap) -> None:
        """Give up ``swap`` before its renames ran: its staging folder removed, its journal entry
        ended (also when the job is being cancelled)."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(remove_tree, sibling(swap.local, "new"))
            await anyio.to_thread.run_sync(swap.finish)

    async def _swap_in(
        self,
        job: Job,
        swap: Swap,
        content: Content,
        installed: Content | None,
        recorded: Content,
        local: Path,
    ) -> None:
        """The filled staging folder in place, then AfterUpdate (rolling back when it fails) and record."""
        await anyio.to_thread.run_sync(swap.run)

        job.step = "AfterUpdate"
        swap.hooks_ran = True
        await anyio.to_thread.run_sync(swap.save)
        try:
            await self._hook(job, "AfterUpdate", content.after_update, content, installed, local)
        except HookError as exc:
            job.error = str(exc)
            job.step = "rollback"
            job.say(f"{exc}; restoring {installed.version if installed else 'the state before'}")
            await self._undo(job, swap)
            job.state = "rolled_back"
            raise

        job.step = "record"
        await self._commit(job, swap, recorded)

    async def _commit(self, job: Job, swap: Swap, recorded: Content | None) -> None:
        """Record the change in the config (the commit point), then clean up behind it."""
        if recorded is None:
            await self.store.forget(swap.package)
        else:
            await self.store.record(recorded)
        await anyio.to_thread.run_sync(self._cleanup_committed, swap)
        if recorded is not None:
            job.say(f"{swap.package} {recorded.version} installed")
        else:
            job.say(f"{swap.package} removed")

    def _cleanup_committed(self, swap: Swap) -> None:
        record = self.previous / f"{swap.package}.json"
        if swap.action in ("remove", "rollback"):
            # After a rollback the kept folder holds the newer version: a second rollback must not
            # roll forward to it, so there is nothing left to roll back to.
            record.unlink(missing_ok=True)
            remove_tree(sibling(swap.local, "prev"))
        elif swap.before is not None:
            self.previous.mkdir(parents=True, exist_ok=True)
            write_atomically(record, json.dumps(swap.before, ensure_ascii=False).encode())
        for tag in ("trash", "new", "swap"):
            remove_tree(sibling(swap.local, tag))
        swap.finish()

    async def _undo(self, job: Job | None, swap: Swap) -> None:
        """Put the files back as they were before ``swap`` and restart the restored version."""
        await anyio.to_thread.run_sync(swap.undo)
        for tag in ("new", "swap"):
            await anyio.to_thread.run_sync(remove_tree, sibling(swap.local, tag))
        if swap.hooks_ran and swap.before is not None:
            replaced = parse_content(swap.after) if swap.after else None
            await self._after_restore(job, swap, restored=parse_content(swap.before), replaced=replaced)
        swap.finish()

    async def _after_restore(
        self, job: Job | None, swap: Swap, *, restored: Content, replaced: Content | None
    ) -> None:
        """Run the restored version's AfterUpdate so services come back on its code; a failure is logged."""
        say: Callable[[str], None] = job.say if job is not None else log.warning
        if job is not None:
            job.step = "AfterUpdate"
        try:
            await run_hook(
                f"AfterUpdate of the restored {restored.version}",
                restored.after_update,
                cwd=swap.local if swap.local.is_dir() else swap.local.parent,
                env=self._hook_env(restored, replaced, swap.local),
                time_limit=self.store.config.hook_timeout,
                log=say,
            )
        except HookError as exc:
            say(f"{exc}; the restored files stay")

    async def recover(self) -> list[str]:
        """Finish or undo every change a killed daemon left in the journal; return what was done."""
        done = []
        for swap in await anyio.to_thread.run_sync(self.journal.pending):
            recorded = self.store.config.installed(swap.package)
            committed = (
                (recorded is None)
                if swap.after is None
                else (recorded is not None and recorded.raw == swap.after)
            )
            if committed:
                await anyio.to_thread.run_sync(self._cleanup_committed, swap)
                done.append(f"{swap.action} of {swap.package} was committed; cleaned up")
            else:
                await self._undo(None, swap)
                done.append(f"{swap.action} of {swap.package} was interrupted; restored the previous state")
            log.warning("recovery: %s", done[-1])
        if self.downloads.is_dir():
            # Partial downloads are kept so that the next try resumes them, but not forever.
            stale = time.time() - _KEEP_PARTIAL_S
            for partial in self.downloads.iterdir():
                if partial.stat().st_mtime < stale:
                    partial.unlink(missing_ok=True)
        return done

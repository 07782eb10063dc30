"""Making a delta between two stored versions on its first request, once, and keeping it in the store.

Once per pair of files, whatever the number of devices (and server processes) asking at the same
moment: in this process the askers of one pair share one task; across processes the ``deltas`` row is
claimed by one (``repository.deltas``), and the others poll it until it is ``ready`` or ``none``. The
maker copies both zips from the store into a temporary folder (streamed), makes the delta there in a
worker thread (``otakit.delta``: one file's old and new bytes in memory at most) and stores it as an
object of its own, recorded as an upload in flight until the row points at it, so that a maker killed
half-way leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread

from otakit.delta import DeltaStats, make_delta
from otakit.errors import OtakitError, UnavailableError
from otakit.server.blobstore import BlobStore, IncomingBlob
from otakit.server.inflight import InFlight
from otakit.server.publish import begin_upload, discard
from otakit.server.repository import Repository, VersionRow
from otakit.server.repository.deltas import DeltaRow

__all__ = ["DeltaMaker", "has_tree"]

log = logging.getLogger("otakit.server")

_CHUNK = 4 * 1024 * 1024
_POLL_S = 0.2


def has_tree(row: VersionRow) -> bool:
    """Whether the version's content.json carries a tree manifest (only those get deltas)."""
    value = row.content_json.get("tree_sha256")
    return isinstance(value, str) and len(value) == 64


class DeltaMaker:
    """This process's share of the deltas: the pairs it is making, and how long others wait for one."""

    def __init__(
        self,
        repo: Repository,
        store: BlobStore,
        inflight: InFlight,
        *,
        max_ratio: float,
        wait_seconds: float,
        work_dir: Path | None = None,
        on_result: Callable[[str], None] | None = None,
        concurrency: int = 1,
    ) -> None:
        self.repo = repo
        self.store = store
        self.inflight = inflight
        self.max_ratio = max_ratio
        self.wait_seconds = wait_seconds
        self.work_dir = work_dir
        self._making: dict[tuple[str, str], asyncio.Task[None]] = {}
        # Making a delta is CPU and disk work that anyone who can download may ask for: this process
        # makes ``concurrency`` at a time, and the others wait their turn (their rows stay leased).
        self._slots = asyncio.Semaphore(concurrency)
        self._on_result = on_result  # told "made" or "none" after each delta this process made

    async def find(self, old: VersionRow, new: VersionRow) -> DeltaRow | None:
        """The ready delta from ``old``'s file to ``new``'s, made now if nobody has; ``None`` when there
        is none to have (no tree manifests, not worth it, or not made within ``wait_seconds``)."""
        if not (has_tree(old) and has_tree(new)) or new.version_key <= old.version_key:
            return None  # upgrades only: a device goes back to the version it kept, never by delta
        pair = (old.object_id, new.object_id)
        deadline = time.monotonic() + self.wait_seconds
        while True:
            row = await self.repo.deltas.get(*pair)
            if row is not None and row.state == "ready":
                return row
            if row is not None and row.state == "none":
                return None
            if pair not in self._making:
                now = time.time()
                if row is None:
                    mine = await self.repo.deltas.claim(
                        *pair, self.inflight.owner, self.inflight.lease_until(), now
                    )
                else:  # another maker's: ours once its lease ran out
                    mine = await self.repo.deltas.take(
                        row, self.inflight.owner, self.inflight.lease_until(), now
                    )
                if mine:
                    self._making[pair] = asyncio.create_task(self._make(old, new))
            task = self._making.get(pair)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if task is not None:
                # Shielded: a device that hangs up does not cancel the delta the others wait for.
                with anyio.move_on_after(left):
                    await asyncio.shield(task)
                if task.done():  # made here: ready or none now, or it failed (the zip, this time)
                    row = await self.repo.deltas.get(*pair)
                    return row if row is not None and row.state == "ready" else None
            else:
                await anyio.sleep(min(_POLL_S, left))

    async def _make(self, old: VersionRow, new: VersionRow) -> None:
        pair = (old.object_id, new.object_id)
        renewing = asyncio.create_task(self._renew(pair))
        try:
            async with self._slots:
                await self._make_and_store(old, new)
        except Exception as exc:
            log.warning("the delta %s %s -> %s was not made: %s", new.name, old.version, new.version, exc)
            # Let the next request try again; if even that fails, the lease runs out and one takes over.
            with contextlib.suppress(UnavailableError):
                await self.repo.deltas.drop(*pair)
        finally:
            renewing.cancel()
            self._making.pop(pair, None)

    def _count(self, result: str) -> None:
        if self._on_result is not None:
            self._on_result(result)

    async def _renew(self, pair: tuple[str, str]) -> None:
        """Keep the row's lease while the delta is being made (a big one takes a while)."""
        while True:
            await anyio.sleep(self.inflight.renew_every)
            try:
                await self.repo.deltas.renew(*pair, self.inflight.owner, self.inflight.lease_until())
            except UnavailableError as exc:
                log.warning("could not renew the lease of a delta being made: %s", exc)

    async def _make_and_store(self, old: VersionRow, new: VersionRow) -> None:
        pair = (old.object_id, new.object_id)
        owner = self.inflight.owner
        with tempfile.TemporaryDirectory(prefix="otakit-delta-", dir=self.work_dir) as folder:
            work = Path(folder)
            old_zip, new_zip, delta = work / "old.zip", work / "new.zip", work / "delta"
            await self._fetch(old.object_id, old_zip)
            await self._fetch(new.object_id, new_zip)
            started = time.monotonic()

            def make() -> DeltaStats:
                with open(delta, "wb") as out:
                    return make_delta(
                        old_zip,
                        new_zip,
                        out,
                        from_tree_sha256=old.content_json["tree_sha256"],
                        to_tree_sha256=new.content_json["tree_sha256"],
                    )

            try:
                stats = await anyio.to_thread.run_sync(make)
            except (OtakitError, zipfile.BadZipFile, zlib.error) as exc:  # the files, not the moment
                log.warning("no delta %s %s -> %s: %s", new.name, old.version, new.version, exc)
                await self.repo.deltas.finish(*pair, owner)
                self._count("none")
                return
            await self.repo.deltas.renew(*pair, owner, self.inflight.lease_until())
            took = time.monotonic() - started
            if not stats.worthwhile(self.max_ratio):
                log.info(
                    "no delta %s %s -> %s: %d bytes against a zip of %d (made in %.1f s)",
                    new.name, old.version, new.version, stats.size, stats.new_zip_size, took,
                )  # fmt: skip
                await self.repo.deltas.finish(*pair, owner)
                self._count("none")
                return
            incoming = await begin_upload(self.store, self.inflight)
            try:
                sha256 = await self._write(delta, incoming)
                kept = await self.repo.deltas.finish(
                    *pair, owner, object_id=incoming.object_id, size=stats.size, sha256=sha256
                )
            except BaseException:
                await discard(self.store, self.inflight, incoming)  # recovery deletes what it cannot
                raise
            if not kept:  # taken over meanwhile: the other maker's delta stands
                await discard(self.store, self.inflight, incoming)
                return
            await self.inflight.end(incoming.object_id)
            self._count("made")
            log.info(
                "made the delta %s %s -> %s: %d bytes against a zip of %d, in %.1f s",
                new.name, old.version, new.version, stats.size, stats.new_zip_size, took,
            )  # fmt: skip

    async def _fetch(self, object_id: str, path: Path) -> None:
        """Copy an object into ``path``, streamed."""
        reader = await self.store.open_range(object_id)
        try:
            async with await anyio.open_file(path, "wb") as out:
                async for chunk in reader:
                    await out.write(chunk)
        finally:
            await reader.aclose()

    @staticmethod
    async def _write(path: Path, incoming: IncomingBlob) -> str:
        """Write the file at ``path`` into ``incoming`` and complete it; its sha256."""
        digest = hashlib.sha256()
        async with await anyio.open_file(path, "rb") as source:
            while chunk := await source.read(_CHUNK):
                await anyio.to_thread.run_sync(digest.update, chunk)
                await incoming.write(chunk)
        await incoming.complete()
        return digest.hexdigest()

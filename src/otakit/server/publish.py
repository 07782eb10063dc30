"""Committing an upload, and putting things right after a crash, across processes and hosts.

The protocol keeps one invariant for every reader, and after a crash at any point: a row's object is
there and is the bytes the row describes, and (on the local store) no layout file is there without its
row.

1. Before its first byte is stored, an upload has an entry in the database's ``uploads`` table, leased
   by its process (``InFlight``); its bytes stream into the blob store under the entry's id, hashed.
2. Once the hash matches, the entry names the version it will write, and the object is completed.
3. Claim the version key (a transaction holding the key's lock across processes); without ``force`` an
   existing row (or layout file) is a conflict. *Fence*: the entry must still be ours, or recovery took
   it. Put the row; on the local store hard-link the object into the layout path (atomic replace) and
   remove the old layout path if the version string changed (``1.0`` replaced by ``1.0.0``); commit.
   Publishing is this commit.
4. Bump the change counter, delete the replaced object, end the entry.

Readers go through the row's object, which never changes, so a reader sees old or new, whole. Any
failure undoes what the upload did (``reconcile``); when even that fails, or the process dies, the entry
stays. ``recover`` in any process takes an entry whose owner died on this host, or whose lease ran out,
and reconciles it: the layout of the entry's key re-derived from the committed row, and the entry's
object deleted (and its unfinished multipart upload aborted) unless the row points at it. Idempotent,
and it needs no hashing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import anyio

from otakit.content import Content
from otakit.errors import ConflictError
from otakit.server.blobstore import BlobStore, IncomingBlob
from otakit.server.inflight import InFlight, Owner
from otakit.server.repository import Repository, VersionKey, VersionRow
from otakit.server.repository.uploads import UploadEntry
from otakit.versions import version_key

__all__ = [
    "RecoveryReport",
    "begin_upload",
    "discard",
    "publish",
    "reconcile",
    "recover",
    "unpublish",
    "version_exists",
]

log = logging.getLogger("otakit.server")


def version_exists(content: Content, existing: VersionRow | None) -> ConflictError:
    """The 409 for an upload of a version the store has (as a row, or a layout file without one)."""
    shown = existing.version if existing is not None else content.version
    return ConflictError(
        f"{content.package} {shown} on branch {content.branch} exists already; "
        "upload with force=1 to replace it"
    )


async def begin_upload(store: BlobStore, inflight: InFlight) -> IncomingBlob:
    """A new object's upload, its entry recorded before a byte is stored (and ended again when the
    store refuses to begin it). ``discard`` drops it, or ``publish`` commits it."""
    upload_id = await inflight.begin()
    try:
        return await store.begin(upload_id)
    except BaseException:
        await inflight.end(upload_id)
        raise


async def publish(
    repo: Repository,
    store: BlobStore,
    inflight: InFlight,
    content: Content,
    incoming: IncomingBlob,
    text: str,
    *,
    force: bool,
    released: bool = True,
) -> None:
    """Store ``incoming`` (every byte written, hash checked) as ``content``'s version; ``text`` is its
    JSON text. From this call on ``incoming`` is publish's: on any failure nothing of it stays.

    ``released=False`` stores it held: listed and downloadable, but not offered by ``/latestVersion``.
    A forced replacement takes its own flag, not the replaced version's.
    """
    upload_id = incoming.object_id
    entry = UploadEntry(upload_id, inflight.owner, 0.0, content.package, content.branch, content.version)
    key = VersionKey(content.package, content.branch, content.version_key)
    row = VersionRow(
        content.package,
        content.branch,
        content.version,
        key.version_key,
        text,
        upload_id,
        released,
        incoming.size,
        time.time(),
    )
    layout = store.layout
    with anyio.CancelScope(shield=True):
        replaced: VersionRow | None = None
        try:
            await inflight.name(upload_id, content.package, content.branch, content.version)
            await incoming.complete()
            async with repo.claim(key) as claim:
                replaced = claim.existing
                if not force and (replaced is not None or (layout and await layout.exists(*_layout(row)))):
                    raise version_exists(content, replaced)
                await inflight.fence(claim, upload_id)
                await claim.put(row)
                if layout is not None:
                    await layout.link(*_layout(row), upload_id)
                    if replaced is not None and replaced.version != row.version:
                        await layout.unlink(*_layout(replaced))
        except ConflictError:
            await discard(store, inflight, incoming)  # nothing was laid out: only the object goes
            raise
        except BaseException:
            await _undo(repo, store, inflight, entry, incoming)
            raise
        await repo.changes.bump()  # before the 200: no process answers from a cache made before it
        if replaced is not None:
            await _delete_quietly(store, replaced.object_id)
        await _end_quietly(inflight, upload_id)


async def discard(store: BlobStore, inflight: InFlight, incoming: IncomingBlob) -> None:
    """Drop an upload that is not committed: its bytes or object, then its entry. When the store or the
    database fails here, the entry is left to recovery and the failure logged, not raised."""
    with anyio.CancelScope(shield=True):
        try:
            if incoming.completed:
                await store.delete(incoming.object_id)
            else:
                await incoming.abort()
            await inflight.end(incoming.object_id)
        except Exception as exc:
            log.warning("upload %s is left to recovery: %s", incoming.object_id, exc)
            inflight.abandon(incoming.object_id)


async def unpublish(repo: Repository, store: BlobStore, inflight: InFlight, key: VersionKey) -> bool:
    """Delete the version under ``key``, row and files, as crash-safe as an upload; False if absent.

    An entry names the version while the row goes (and its layout file is unlinked) in the claim's
    transaction; a crash before the commit leaves the row, and recovery re-links its file; a crash after
    it leaves no row, and recovery removes the file (the object is then an orphan, swept at start).
    """
    found = await repo.get(key)
    if found is None:
        return False
    with anyio.CancelScope(shield=True):
        upload_id = await inflight.begin()
        entry = UploadEntry(upload_id, inflight.owner, 0.0, key.name, key.branch, found.version)
        try:
            await inflight.name(upload_id, key.name, key.branch, found.version)
            async with repo.claim(key) as claim:
                row = claim.existing
                if row is not None:
                    await inflight.fence(claim, upload_id)
                    await claim.delete()
                    if store.layout is not None:
                        await store.layout.unlink(*_layout(row))
        except BaseException:
            await _undo(repo, store, inflight, entry, None)
            raise
        await repo.changes.bump()  # before the 200: no process answers from a cache made before it
        if row is not None:
            await _delete_quietly(store, row.object_id)
        await _end_quietly(inflight, upload_id)
    return row is not None


def _layout(row: VersionRow) -> tuple[str, str, str]:
    return row.name, row.branch, row.version


async def _delete_quietly(store: BlobStore, object_id: str) -> None:
    """Delete an object no row points at any more; on failure it is an orphan that recovery sweeps."""
    try:
        await store.delete(object_id)
    except Exception as exc:
        log.warning("object %s is left for the next sweep: %s", object_id, exc)


async def _end_quietly(inflight: InFlight, upload_id: str) -> None:
    """End a committed upload's entry. The commit stands whatever happens here: when the database
    fails now, recovery ends the entry later (it finds the row pointing at the object and keeps it)."""
    try:
        await inflight.end(upload_id)
    except Exception as exc:
        log.warning("upload %s is committed; its entry is left to recovery: %s", upload_id, exc)
        inflight.abandon(upload_id)


async def _undo(
    repo: Repository, store: BlobStore, inflight: InFlight, entry: UploadEntry, incoming: IncomingBlob | None
) -> None:
    try:
        if incoming is not None and not incoming.completed:
            await incoming.abort()
        await reconcile(repo, store, inflight, entry)
    except Exception:
        log.exception("could not undo upload %s; recovery will finish it", entry.upload_id)
        inflight.abandon(entry.upload_id)


async def reconcile(repo: Repository, store: BlobStore, inflight: InFlight, entry: UploadEntry) -> None:
    """Make what ``entry`` may have touched match the database, then end the entry."""
    row: VersionRow | None = None
    if entry.name is not None and entry.branch is not None and entry.version is not None:
        name, branch, version = entry.name, entry.branch, entry.version
        key = VersionKey(name, branch, version_key(version))
        async with repo.claim(key) as claim:
            row = claim.existing
            layout = store.layout
            if layout is not None:
                if row is not None and not await layout.is_object(*_layout(row), row.object_id):
                    await layout.link(*_layout(row), row.object_id)
                await layout.discard_link(name, branch, entry.upload_id)
                if row is None or row.version != version:
                    await layout.unlink(name, branch, version)
    kept = row is not None and row.object_id == entry.upload_id
    if not kept and not await repo.deltas.references(entry.upload_id):  # a delta's object, once made
        await store.delete(entry.upload_id)
        await store.abort_unfinished(entry.upload_id)
    await inflight.end(entry.upload_id)


@dataclass(slots=True)
class RecoveryReport:
    uploads: int = 0
    objects: int = 0
    incoming: int = 0

    def __str__(self) -> str:
        return (
            f"recovered {self.uploads} interrupted upload(s), removed {self.objects} orphan object(s) "
            f"and {self.incoming} partial upload(s)"
        )


def _takeable(entry: UploadEntry, now: float) -> tuple[bool, float | None]:
    """Whether recovery may take ``entry`` now, and the ``expired_at`` to take it with (``None`` when
    its owner is dead on this host: no lease to wait for)."""
    owner = Owner.parse(entry.owner)
    if owner is not None and owner.is_dead():
        return True, None
    return entry.lease_until < now, now


async def recover(
    repo: Repository, store: BlobStore, inflight: InFlight, *, sweep: bool = True
) -> RecoveryReport:
    """Finish or undo what dead processes left; safe while other live processes upload.

    Entries whose owner died on this host, or whose lease ran out, are reconciled. With ``sweep`` (at
    start and in ``fsck``), deltas between files no version points at are dropped, and objects that no
    version, delta or entry names, and unfinished uploads no entry names, are removed.
    """
    report = RecoveryReport()
    now = time.time()
    for entry in await repo.uploads.all() if sweep else await repo.uploads.expired(now):
        if inflight.holds(entry.upload_id):
            continue
        takeable, expired_at = _takeable(entry, now)
        if not takeable:
            continue
        if not await repo.uploads.take(entry, inflight.owner, inflight.lease_until(), expired_at=expired_at):
            continue  # renewed meanwhile, or another process took it
        inflight.adopt(entry.upload_id)
        try:
            await reconcile(repo, store, inflight, entry)
        except BaseException:
            inflight.abandon(entry.upload_id)
            raise
        report.uploads += 1
    if sweep:
        # Order matters: what the store holds is listed first, then the uploads in flight, then the
        # committed rows. An object or unfinished upload that is in no entry and no row at that point
        # belongs to no upload that could still commit it (an entry exists before its first byte).
        listed = [object_id async for object_id in store.object_ids()]
        unfinished = await store.unfinished()
        live = {entry.upload_id for entry in await repo.uploads.all()}
        for delta in await repo.deltas.orphaned():  # between files no version points at any more
            await repo.deltas.drop(delta.from_object, delta.to_object)
        referenced = {object_id async for object_id in repo.object_ids()} | await repo.deltas.object_ids()
        for object_id in listed:
            if object_id not in referenced and object_id not in live:
                await store.delete(object_id)
                report.objects += 1
        for object_id in unfinished:
            if object_id not in live:
                await store.abort_unfinished(object_id)
                report.incoming += 1
    if report.uploads:
        await repo.changes.bump()
    return report

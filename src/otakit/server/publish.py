"""Committing an upload, and putting things right after a crash.

The protocol keeps one invariant for every reader, and after a crash at any point: a row's file is
there and is the bytes the row describes, and no layout file is there without its row.

1. The upload's bytes are already durable in an incoming file, hashed and checked.
2. A journal entry names the upload (id, package, branch, version) and stays flock-held while we work.
3. The incoming file becomes the immutable object ``.objects/<upload id>``.
4. Claim the version key in the database (a transaction holding the key's lock across processes);
   without ``force`` an existing row or layout file is a conflict. Put the row, hard-link the object
   into the layout path (atomic replace), remove the old layout path if the version string changed
   (``1.0`` replaced by ``1.0.0``), commit.
5. Delete the replaced object, end the journal.

The server reads files through the row's object, which never changes, so a reader sees old or new,
whole. After a crash, ``reconcile`` re-derives the layout of each journaled key from the committed row,
under the same claim: it is idempotent and needs no hashing.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import anyio
import anyio.to_thread

from otakit.content import Content
from otakit.errors import ConflictError
from otakit.server.filestore import FileStore, IncomingFile, JournalEntry
from otakit.server.repository import Repository, VersionKey, VersionRow
from otakit.versions import version_key

__all__ = ["RecoveryReport", "publish", "reconcile", "recover", "unpublish", "version_exists"]

log = logging.getLogger("otakit.server")


def version_exists(content: Content, existing: VersionRow | None) -> ConflictError:
    """The 409 for an upload of a version the store has (as a row, or a file without one)."""
    shown = existing.version if existing is not None else content.version
    return ConflictError(
        f"{content.package} {shown} on branch {content.branch} exists already; "
        "upload with force=1 to replace it"
    )


async def publish(
    repo: Repository,
    store: FileStore,
    content: Content,
    incoming: IncomingFile,
    text: str,
    *,
    force: bool,
    released: bool = True,
) -> None:
    """Store ``incoming`` (finished and verified) as ``content``'s version; ``text`` is its JSON text.

    ``released=False`` stores it held: listed and downloadable, but not offered by ``/latestVersion``.
    A forced replacement takes its own flag, not the replaced version's.
    """
    upload_id = incoming.upload_id
    entry = JournalEntry(upload_id, content.package, content.branch, content.version)
    key = VersionKey(content.package, content.branch, content.version_key)
    row = VersionRow(
        content.package, content.branch, content.version, key.version_key, text, upload_id, released
    )
    run = anyio.to_thread.run_sync
    with anyio.CancelScope(shield=True):
        await run(store.begin_journal, entry)
        replaced: VersionRow | None = None
        committed = False
        try:
            await run(store.adopt, incoming)
            async with repo.claim(key) as claim:
                replaced = claim.existing
                if not force and (replaced is not None or await run(store.layout_exists, *_layout(row))):
                    raise version_exists(content, replaced)
                await claim.put(row)
                await run(store.link_layout, *_layout(row), upload_id)
                if replaced is not None and replaced.version != row.version:
                    await run(store.unlink_layout, *_layout(replaced))
            committed = True
        except ConflictError:
            await run(store.delete_object, upload_id)
            await run(store.end_journal, upload_id)
            raise
        except BaseException:
            await _undo(repo, store, entry)
            raise
        await repo.changes.bump()  # before the 200: no process answers from a cache made before it
        if committed and replaced is not None:
            await run(store.delete_object, replaced.object_id)
        await run(store.end_journal, upload_id)


async def unpublish(repo: Repository, store: FileStore, key: VersionKey) -> bool:
    """Delete the version under ``key``, row and files, as crash-safe as an upload; False if absent.

    A journal entry names the version while the row goes and its layout file is unlinked in the
    claim's transaction; a crash before the commit leaves the row, and recovery re-links its file; a
    crash after it leaves no row, and recovery removes the file (the object is then an orphan).
    """
    found = await repo.get(key)
    if found is None:
        return False
    run = anyio.to_thread.run_sync
    entry = JournalEntry(uuid.uuid4().hex, key.name, key.branch, found.version)
    with anyio.CancelScope(shield=True):
        await run(store.begin_journal, entry)
        try:
            async with repo.claim(key) as claim:
                row = claim.existing
                if row is not None:
                    await claim.delete()
                    await run(store.unlink_layout, *_layout(row))
        except BaseException:
            await _undo(repo, store, entry)
            raise
        await repo.changes.bump()  # before the 200: no process answers from a cache made before it
        if row is not None:
            await run(store.delete_object, row.object_id)
        await run(store.end_journal, entry.upload_id)
    return row is not None


def _layout(row: VersionRow) -> tuple[str, str, str]:
    return row.name, row.branch, row.version


async def _undo(repo: Repository, store: FileStore, entry: JournalEntry) -> None:
    try:
        await reconcile(repo, store, entry)
    except Exception:
        # Leave the journal for start-up recovery or `otakit server fsck`.
        log.exception("could not undo upload %s; it will be recovered at the next start", entry.upload_id)
        await anyio.to_thread.run_sync(lambda: store.end_journal(entry.upload_id, remove=False))


async def reconcile(repo: Repository, store: FileStore, entry: JournalEntry) -> None:
    """Make the files of ``entry``'s version key match the database, then end the journal entry."""
    run = anyio.to_thread.run_sync
    key = VersionKey(entry.package, entry.branch, version_key(entry.version))
    async with repo.claim(key) as claim:
        row = claim.existing
        if row is not None and not await run(store.layout_is, *_layout(row), row.object_id):
            await run(store.link_layout, *_layout(row), row.object_id)
        await run(store.discard_link, entry.package, entry.branch, entry.upload_id)
        if row is None or row.version != entry.version:
            await run(store.unlink_layout, entry.package, entry.branch, entry.version)
    if row is None or row.object_id != entry.upload_id:
        await run(store.delete_object, entry.upload_id)
    await run(store.end_journal, entry.upload_id)


@dataclass(slots=True)
class RecoveryReport:
    journals: int = 0
    objects: int = 0
    incoming: int = 0

    def __str__(self) -> str:
        return (
            f"recovered {self.journals} interrupted upload(s), removed {self.objects} orphan object(s) "
            f"and {self.incoming} partial upload(s)"
        )


async def recover(repo: Repository, store: FileStore) -> RecoveryReport:
    """Finish or undo what dead processes left; safe while other live processes upload."""
    run = anyio.to_thread.run_sync
    report = RecoveryReport()
    for entry in await run(store.claim_dead_journals):
        await reconcile(repo, store, entry)
        report.journals += 1
    # Order matters: objects listed first, then uploads still in flight, then the committed rows. An
    # object that is neither in a row nor held by a live upload at that point can never become one.
    listed = await run(store.object_ids)
    live = await run(store.live_journal_ids)
    referenced = {object_id async for object_id in repo.object_ids()}
    for object_id in listed:
        if object_id not in referenced and object_id not in live:
            await run(store.delete_object, object_id)
            report.objects += 1
    report.incoming = await run(store.remove_stale_incoming)
    if report.journals:
        await repo.changes.bump()
    return report

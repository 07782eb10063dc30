"""The update steps, in order: check → resolve → download → BeforeUpdate → install → AfterUpdate → record.

One orchestrator does the I/O; the decisions (is it an upgrade, dependency order, is a zip entry safe)
are the pure functions of ``plan``. Each change of a package's files is journaled (``journal``) so that
a daemon killed at any step comes back with the old version or the new one: ``recover`` at start
finishes what was committed (the config names the new version) and undoes the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread
from packaging.specifiers import SpecifierSet

from otakit.bundle import Bundle, BundledPackage
from otakit.content import Content, parse_content
from otakit.daemon.config_store import ConfigStore
from otakit.daemon.failures import FailedVersions
from otakit.daemon.fetch import Fetcher
from otakit.daemon.hooks import HookError, run_hook
from otakit.daemon.jobs import Job
from otakit.daemon.journal import Journal, Swap, remove_tree, sibling
from otakit.daemon.plan import choose, install_order, is_upgrade
from otakit.daemon.unpack import inspect, unpack
from otakit.delta import DeltaError, apply_delta
from otakit.errors import ConflictError, NotFoundError, OtakitError, TooLargeError, ValidationError
from otakit.fsutil import write_atomically
from otakit.signing import parse_public_key, verify_content
from otakit.versions import parse_version

__all__ = ["InstallRequest", "Updater"]

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


@dataclass(frozen=True)
class InstallRequest:
    package: str
    branch: str
    remote: str
    local: str
    version: str | None = None


class Updater:
    def __init__(self, store: ConfigStore, fetcher: Fetcher) -> None:
        self.store = store
        self.fetcher = fetcher
        # One change of files at a time: a dependency installed for one job is a package of its own.
        self._changing = asyncio.Lock()
        self.trusted = [parse_public_key(line) for line in store.config.trusted_keys]
        state = store.state_dir
        self.journal = Journal(state / "journal")
        self.downloads = state / "downloads"
        self.bundles = state / "bundles"  # bundles received through the API, until their job ends
        self.previous = state / "previous"
        self.failed = FailedVersions(state / "failed.json")

    # -- questions -------------------------------------------------------------------------------
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

    async def latest(self, remote: str, package: str, branch: str) -> Content:
        found, _ = await self.fetcher.latest(remote, package, branch)
        assert found is not None  # no ETag was sent, so no 304
        return found

    # -- jobs ------------------------------------------------------------------------------------
    async def install(self, job: Job, request: InstallRequest) -> None:
        job.step = "check"
        target = await self._pick(request.remote, request.package, request.branch, request.version)
        await self._apply(job, Planned(target, request.remote, request.local), expect=None)

    async def update(
        self, job: Job, name: str, version: str | None = None, allow_downgrade: bool = False
    ) -> None:
        installed = self.installed(name)
        job.step = "check"
        job.from_version = installed.version
        target = await self._pick(installed.remote, name, installed.branch, version)
        job.to_version = target.version
        if target.parsed_version == installed.parsed_version:
            job.say(f"{name} {installed.version} is installed; nothing to do")
            return
        if not is_upgrade(installed, target) and not allow_downgrade:
            raise ValidationError(
                f"refusing to downgrade {name} from {installed.version} to {target.version} "
                "without allow_downgrade"
            )
        await self._apply(job, Planned(target, installed.remote, installed.local), expect=installed.version)

    async def rollback(self, job: Job, name: str) -> None:
        async with self._exclusive(job):
            await self._rollback(job, name)

    async def remove(self, job: Job, name: str) -> None:
        async with self._exclusive(job):
            await self._remove(job, name)

    async def install_bundle(self, job: Job, bundle: Bundle) -> None:
        """Install what an offline bundle holds, in its order, with the checks of an online install.

        Before anything changes: every package's signature (with ``trusted_keys``), no downgrade of an
        installed package, every requirement met by the bundle or the device, every folder allowed.
        Then every zip needed comes out of the bundle, its sha256 checked, before any hook runs; and each
        package is installed as a downloaded zip is: inspect → BeforeUpdate → swap → AfterUpdate (rolled
        back when it fails) → record, journaled. The caller closes ``bundle``.
        """
        listed = bundle.packages
        target = listed[-1].content
        now = self.store.config.installed(target.package)
        job.from_version, job.to_version = (now.version if now else None), target.version
        job.step = "verify"
        plan: list[tuple[BundledPackage, Planned]] = []  # what is not installed at its version already
        have: dict[str, Content] = {}
        for item in listed:
            content = item.content
            self.verify(content)
            installed = self.store.config.installed(content.package)
            if installed is not None and content.parsed_version < installed.parsed_version:
                raise ValidationError(
                    f"the bundle's {content.package} {content.version} would downgrade the installed "
                    f"{installed.version}; refusing"
                )
            for name, spec in content.requirements.items():
                found = have.get(name) or self.store.config.installed(name)
                if name != content.package and (
                    found is None or not spec.contains(found.parsed_version, prereleases=True)
                ):
                    raise ValidationError(
                        f"{content.package} {content.version} needs {name}{spec or ''}, which neither the "
                        "bundle nor the device has"
                    )
            have[content.package] = content
            if installed is not None and installed.parsed_version == content.parsed_version:
                continue
            planned = Planned(
                content,
                installed.remote if installed else content.remote,
                installed.local if installed else content.local,
            )
            self.store.check_local(content.package, planned.local)
            plan.append((item, planned))
        if self.trusted:
            job.say(f"{len(listed)} package(s) in the bundle, every signature verified")
        async with self._exclusive(job):
            if not plan:
                job.say("everything in the bundle is installed already; nothing to do")
                return
            # Every zip out of the bundle, its sha256 checked, before any package's hooks run.
            job.step = "extract"
            self.downloads.mkdir(parents=True, exist_ok=True)
            zips = [
                self.downloads / f"{item.file}.bundle-{item.content.sha256.lower()[:16]}" for item, _ in plan
            ]
            try:
                for (item, _), zip_path in zip(plan, zips, strict=True):
                    zip_path.unlink(missing_ok=True)
                    await anyio.to_thread.run_sync(bundle.extract, item, zip_path)
                    job.say(f"extracted and verified {item.file}")
                for (_, planned), zip_path in zip(plan, zips, strict=True):
                    await self._install_from_bundle(job, planned, zip_path)
            finally:
                for zip_path in zips:
                    zip_path.unlink(missing_ok=True)

    async def _install_from_bundle(self, job: Job, planned: Planned, zip_path: Path) -> None:
        content = planned.content
        installed = self.store.config.installed(content.package)
        if installed is not None and installed.parsed_version >= content.parsed_version:
            job.say(f"{content.package} {installed.version} is installed already; skipping")
            return
        action = "update" if installed else "install"
        recorded = planned.recorded()
        local = self.store.local_path(recorded)
        job.say(
            f"{action} {content.package} {installed.version if installed else '(none)'} -> "
            f"{content.version} at {local}, from the bundle"
        )
        await self._install_zip(job, zip_path, action, content, installed, recorded, local)

    async def _rollback(self, job: Job, name: str) -> None:
        installed = self.installed(name)
        previous = self.previous_of(name)
        if previous is None:
            raise ConflictError(f"{name} has no previous version to roll back to")
        job.from_version, job.to_version = installed.version, previous.version
        local = self.store.local_path(installed)
        job.step = "install"
        between = sibling(local, "swap")
        await anyio.to_thread.run_sync(remove_tree, between)
        prev = sibling(local, "prev")
        renames = [(local, between), (prev, local), (between, prev)]
        swap = self.journal.begin("rollback", name, local, installed.raw, previous.raw, renames)
        await anyio.to_thread.run_sync(swap.run)
        job.say(f"files of {previous.version} restored")
        swap.hooks_ran = True
        await anyio.to_thread.run_sync(swap.save)
        await self._after_restore(job, swap, restored=previous, replaced=installed)
        await self._commit(job, swap, previous)

    async def _remove(self, job: Job, name: str) -> None:
        installed = self.installed(name)
        job.from_version = installed.version
        local = self.store.local_path(installed)
        job.step = "remove"
        trash = sibling(local, "trash")
        await anyio.to_thread.run_sync(remove_tree, trash)
        renames = [(local, trash)] if local.exists() else []
        swap = self.journal.begin("remove", name, local, installed.raw, None, renames)
        await anyio.to_thread.run_sync(swap.run)
        job.step = "record"
        await self._commit(job, swap, None)

    # -- the steps -------------------------------------------------------------------------------
    async def _pick(self, remote: str, package: str, branch: str, version: str | None) -> Content:
        """The server's latest version of ``package`` on ``branch``, or the named version."""
        if version is None:
            return await self.latest(remote, package, branch)
        wanted = parse_version(version)
        for candidate in await self.fetcher.versions(remote, package, branch):
            if candidate.parsed_version == wanted:
                return candidate
        raise NotFoundError(f"{package} {version} is not on {remote} (branch {branch})")

    async def resolve(self, goal: Planned) -> list[Planned]:
        """``goal`` and the dependencies it needs installed first, in install order.

        Each missing or unsatisfied dependency is the highest version that satisfies the requirement on
        the dependent's server and branch, installed at its recorded folder (or its content's). A cycle
        or an unsatisfiable requirement is an error, raised before anything is installed.
        """
        target = goal.content
        chosen: dict[str, Content] = {target.package: target}
        planned: dict[str, Planned] = {target.package: goal}
        requires: dict[str, set[str]] = {}
        queue = [target]
        while queue:
            content = queue.pop()
            source = planned[content.package].remote
            requires[content.package] = set()
            for name, spec in content.requirements.items():
                if name == content.package:  # the original project listed packages as their own dependency
                    self._require(spec, content, content)
                    continue
                if name in chosen:
                    self._require(spec, chosen[name], content)
                    requires[content.package].add(name)
                    continue
                have = self.store.config.installed(name)
                if have is not None and spec.contains(have.parsed_version, prereleases=True):
                    continue
                candidates = await self.fetcher.versions(source, name, content.branch)
                pick = choose(spec, candidates)
                if pick is not None and have is not None and pick.parsed_version < have.parsed_version:
                    raise ValidationError(
                        f"{content.package} needs {name}{spec}, which would downgrade the installed "
                        f"{have.version}; refusing"
                    )
                if pick is None:
                    raise ValidationError(
                        f"{content.package} needs {name}{spec or ''}, which no version on "
                        f"{source} (branch {content.branch}) satisfies"
                    )
                self.verify(pick)
                chosen[name] = pick
                planned[name] = Planned(pick, source, have.local if have else pick.local)
                requires[content.package].add(name)
                queue.append(pick)
        order = [planned[name] for name in install_order(target.package, requires)]
        for step in order:
            self.store.check_local(step.content.package, step.local)
        return order

    @staticmethod
    def _require(spec: SpecifierSet, have: Content, by: Content) -> None:
        if not spec.contains(have.parsed_version, prereleases=True):
            raise ValidationError(
                f"{by.package} needs {have.package}{spec}, but {have.version} is being installed"
            )

    def verify(self, content: Content) -> None:
        """With ``trusted_keys``, a package (dependency included) must carry a valid signature by one
        of them; checked before anything is downloaded or run."""
        if self.trusted:
            verify_content(content.raw, self.trusted)

    async def _apply(self, job: Job, goal: Planned, *, expect: str | None) -> None:
        """Install ``goal`` and what it needs, if its package is still at ``expect`` (None: absent)
        once this job's turn to change files has come."""
        target = goal.content
        job.to_version = target.version
        try:
            job.step = "verify"
            self.verify(target)
            if self.trusted:
                job.say(f"{target.package} {target.version}: signature verified")
            async with self._exclusive(job):
                now = self.store.config.installed(target.package)
                if (now.version if now else None) != expect:
                    raise ConflictError(f"{target.package} changed while this job waited; ask again")
                job.step = "resolve"
                for step in await self.resolve(goal):
                    if step is not goal:
                        job.say(f"dependency {step.content.package} {step.content.version} first")
                    installed = self.store.config.installed(step.content.package)
                    await self._install_one(job, step, "update" if installed else "install")
        except Exception as exc:
            if _package_at_fault(exc, job.step):
                await self.failed.remember(target.package, target.version, str(exc) or type(exc).__name__)
            raise
        await self.failed.forget(target.package, target.version)

    @contextlib.asynccontextmanager
    async def _exclusive(self, job: Job) -> AsyncIterator[None]:
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

    async def _install_one(self, job: Job, step: Planned, action: str) -> None:
        content = step.content
        name = content.package
        installed = self.store.config.installed(name)
        recorded = step.recorded()
        local = self.store.local_path(recorded)
        job.say(
            f"{action} {name} {installed.version if installed else '(none)'} -> {content.version} at {local}"
        )

        job.step = "download"
        self.downloads.mkdir(parents=True, exist_ok=True)
        if (
            installed is not None
            and self._delta_fits(installed, content, local)
            and await self._install_delta(job, step, action, installed, recorded, local)
        ):
            return
        job.step = "download"
        # Named by the sha256 too: a partial file of a since-replaced upload is never resumed.
        zip_path = self.downloads / f"{content.file_name}.{content.sha256.lower()[:16]}"
        await self.fetcher.download(content, zip_path, progress=_progress(job), remote=step.remote)
        try:
            job.downloaded += zip_path.stat().st_size
            job.say(f"downloaded and verified {content.file_name}")
            await self._install_zip(job, zip_path, action, content, installed, recorded, local)
        finally:  # a finished download is never resumed: only a partial one is kept
            zip_path.unlink(missing_ok=True)

    def _delta_fits(self, installed: Content, target: Content, local: Path) -> bool:
        """Whether a delta may build ``target``: both versions carry a tree manifest (covered by the
        signature when keys are trusted) and the installed files are where the new ones go."""
        return (
            _tree_sha256(installed) is not None
            and _tree_sha256(target) is not None
            and self.store.local_path(installed) == local
            and local.is_dir()
        )

    async def _install_delta(
        self, job: Job, step: Planned, action: str, installed: Content, recorded: Content, local: Path
    ) -> bool:
        """Build the new version in the staging folder from the installed files and the server's delta,
        every file hashed as it is read and written, check the tree against the signed ``tree_sha256``,
        then BeforeUpdate → swap → AfterUpdate as for a zip. False, with nothing changed, when there is
        no delta or it does not build exactly that tree (a damaged delta, an installed file changed):
        the caller then downloads the zip."""
        content = step.content
        expected = _tree_sha256(content)
        assert expected is not None
        job.step = "delta"
        delta = (
            self.downloads
            / f"{content.file_name}.from-{installed.version}.{content.sha256.lower()[:16]}.delta"
        )
        try:
            size = await self.fetcher.download_delta(
                installed, content, delta, _progress(job), remote=step.remote
            )
        except (OtakitError, OSError) as exc:
            job.say(f"no delta from {installed.version} ({exc}); downloading the zip")
            return False
        if size is None:
            job.say(f"the server has no delta from {installed.version}; downloading the zip")
            return False
        job.downloaded += size
        job.say(f"downloaded the delta from {installed.version}: {size} bytes")
        swap = await self._begin_swap(action, content.package, local, installed, recorded)
        stage = sibling(local, "new")
        try:
            stage.mkdir()
            stats = await anyio.to_thread.run_sync(apply_delta, delta, local, stage, expected)
        except (DeltaError, OSError) as exc:
            await anyio.to_thread.run_sync(remove_tree, stage)
            await anyio.to_thread.run_sync(swap.finish)
            job.say(f"the delta did not build {content.version} ({exc}); downloading the zip")
            return False
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(remove_tree, stage)
                await anyio.to_thread.run_sync(swap.finish)
            raise
        finally:
            delta.unlink(missing_ok=True)
        job.delta = True
        job.say(
            f"built {content.version} from the delta and the installed files ({stats.copied} file(s)"
            f" copied, {stats.patched} patched, {stats.new} new);"
            " its tree matches tree_sha256"
        )

        job.step = "BeforeUpdate"
        try:
            await self._hook(job, "BeforeUpdate", content.before_update, content, installed, local)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(remove_tree, stage)
                await anyio.to_thread.run_sync(swap.finish)
            raise
        job.step = "install"
        await self._swap_in(job, swap, content, installed, recorded, local)
        return True

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

    async def _install_zip(
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
            await anyio.to_thread.run_sync(remove_tree, stage)
            await anyio.to_thread.run_sync(swap.finish)
            raise
        job.say(f"unpacked {files} file(s)")
        await self._swap_in(job, swap, content, installed, recorded, local)

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

    # -- start-up --------------------------------------------------------------------------------
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


def _package_at_fault(exc: Exception, step: str) -> bool:
    """Whether a failed update says something about the version itself (so that the poller should not
    try it again), rather than about the moment: a server down, a job racing, a dependency missing."""
    if step in ("check", "resolve", "waiting"):
        return False
    return isinstance(exc, ValidationError | TooLargeError | HookError)


def _tree_sha256(content: Content) -> str | None:
    value = content.raw.get("tree_sha256")
    return value.lower() if isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{64}", value) else None


def _progress(job: Job) -> Callable[[int, int | None], None]:
    def report(received: int, total: int | None) -> None:
        if total:
            job.progress = min(99, received * 100 // total)

    return report

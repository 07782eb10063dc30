"""The online update steps, in order: check → resolve → delta or download → BeforeUpdate → install →
AfterUpdate → record.

One orchestrator does the network I/O and the choices; the decisions (is it an upgrade, dependency
order, is a zip entry safe) are the pure functions of ``plan``, and changing files, journaled, is the
``Installer``'s.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread
from packaging.specifiers import SpecifierSet

from otakit.content import Content
from otakit.daemon.config_store import ConfigStore
from otakit.daemon.failures import FailedVersions
from otakit.daemon.fetch import Fetcher
from otakit.daemon.hooks import HookError
from otakit.daemon.installer import Installer, Planned
from otakit.daemon.jobs import Job
from otakit.daemon.journal import remove_tree, sibling
from otakit.daemon.plan import choose, install_order, is_upgrade
from otakit.delta import DeltaError, apply_delta
from otakit.errors import ConflictError, NotFoundError, OtakitError, TooLargeError, ValidationError
from otakit.versions import parse_version

__all__ = ["InstallRequest", "Updater"]

log = logging.getLogger("otakit.daemon")


@dataclass(frozen=True)
class InstallRequest:
    package: str
    branch: str
    remote: str
    local: str
    version: str | None = None


class Updater(Installer):
    """Installs and updates packages from their servers: the latest or a named version, its dependencies
    first, from a delta when one builds the new tree, else from the zip."""

    def __init__(self, store: ConfigStore, fetcher: Fetcher) -> None:
        super().__init__(store)
        self.fetcher = fetcher
        self.failed = FailedVersions(store.state_dir / "failed.json")

    async def latest(self, remote: str, package: str, branch: str) -> Content:
        found, _ = await self.fetcher.latest(remote, package, branch)
        assert found is not None  # no ETag was sent, so no 304
        return found

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
        async with self.exclusive(job):
            await self._rollback(job, name)

    async def remove(self, job: Job, name: str) -> None:
        async with self.exclusive(job):
            await self._remove(job, name)

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
            async with self.exclusive(job):
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
            await self.install_zip(job, zip_path, action, content, installed, recorded, local)
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
            await self._abandon(swap)
            job.say(f"the delta did not build {content.version} ({exc}); downloading the zip")
            return False
        except BaseException:
            await self._abandon(swap)
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
            await self._abandon(swap)
            raise
        job.step = "install"
        await self._swap_in(job, swap, content, installed, recorded, local)
        return True


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

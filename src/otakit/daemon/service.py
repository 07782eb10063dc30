"""The running daemon: its config, jobs, updater and poller, and what the local API asks of them."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from pathlib import Path

from otakit.bundle import Bundle
from otakit.content import Content
from otakit.daemon.bundles import install_bundle
from otakit.daemon.config_store import ConfigStore
from otakit.daemon.fetch import Fetcher
from otakit.daemon.jobs import Action, Job, JobRegistry
from otakit.daemon.plan import is_upgrade
from otakit.daemon.registry import FleetClient
from otakit.daemon.updater import InstallRequest, Updater
from otakit.errors import ConflictError, OtakitError, ValidationError
from otakit.versions import parse_version

__all__ = ["Daemon"]

log = logging.getLogger("otakit.daemon")


def _discard(bundle: Bundle) -> None:
    bundle.close()
    bundle.path.unlink(missing_ok=True)


class Daemon:
    def __init__(self, config_path: Path, *, fetcher: Fetcher | None = None) -> None:
        self.store = ConfigStore(config_path)
        config = self.store.config
        self.fetcher = fetcher or Fetcher(
            retries=config.download_retries, max_bytes=config.max_download_bytes
        )
        # What a person waits for on the API answers at once, or fails at once.
        self.quick = Fetcher(retries=0, max_bytes=config.max_download_bytes, timeout=15)
        self.updater = Updater(self.store, self.fetcher)
        self.jobs = JobRegistry()
        self.fleet: FleetClient | None = None
        if config.registry:
            for fetcher in (self.fetcher, self.quick):
                fetcher.identify(config.registry, config.device)
            self.fleet = FleetClient(self.store)
            self.jobs.observe(self.fleet.job_changed)
        self._etags: dict[str, str] = {}
        self._poller: asyncio.Task[None] | None = None

    # -- life ------------------------------------------------------------------------------------
    async def start(self) -> None:
        for line in await self.updater.recover():
            log.warning("%s", line)
        unknown = self.store.config.unknown_keys()
        if unknown:
            log.warning(
                "%s: ignoring unknown key(s) %s (kept in the file; a misspelling?)",
                self.store.path,
                ", ".join(repr(key) for key in unknown),
            )
        if not self.store.config.trusted_keys:
            log.warning("no trusted_keys configured: package signatures are not verified")
        if self.fleet is not None:
            self.fleet.start()  # in the background: a server that is down delays nothing here
        interval = self.store.config.poll_interval
        if interval > 0:
            self._poller = asyncio.create_task(self._poll_forever(interval), name="otakit-poller")

    async def stop(self) -> None:
        """Stop polling; let each job finish or roll back the step in hand (downloads are abandoned)."""
        if self._poller is not None:
            self._poller.cancel()
        await self.jobs.drain(cancel_steps=("check", "verify", "waiting", "resolve", "download"))
        if self.fleet is not None:
            await self.fleet.stop()  # after the jobs, so that their last reports reach the outbox
        await self.fetcher.aclose()
        await self.quick.aclose()

    # -- what the API asks -------------------------------------------------------------------------
    def start_install(self, request: InstallRequest) -> Job:
        if self.store.config.installed(request.package) is not None:
            raise ConflictError(f"{request.package} is installed already; update it instead")
        self.store.check_local(request.package, request.local)
        return self.jobs.start(request.package, "install", lambda job: self.updater.install(job, request))

    def start_update(self, name: str, version: str | None = None, allow_downgrade: bool = False) -> Job:
        installed = self.updater.installed(name)
        if version is not None:
            wanted = parse_version(version)
            if wanted < installed.parsed_version and not allow_downgrade:
                raise ValidationError(
                    f"refusing to downgrade {name} from {installed.version} to {version}: "
                    'send "allow_downgrade": true to do it anyway'
                )
        return self.jobs.start(
            name, "update", lambda job: self.updater.update(job, name, version, allow_downgrade)
        )

    def start_rollback(self, name: str) -> Job:
        self.updater.installed(name)
        if self.jobs.busy(name):
            raise ConflictError(f"a job for {name} is running; wait for it to finish")
        if self.updater.previous_of(name) is None:
            raise ConflictError(f"{name} has no previous version to roll back to")
        return self.jobs.start(name, "rollback", lambda job: self.updater.rollback(job, name))

    def start_remove(self, name: str) -> Job:
        self.updater.installed(name)
        return self.jobs.start(name, "remove", lambda job: self.updater.remove(job, name))

    def start_bundle(self, bundle: Bundle) -> Job:
        """Install an opened offline bundle in a job of its last package; the job closes the bundle and
        deletes its file when it ends (and so does a refusal here)."""
        try:
            target = bundle.packages[-1].content
            action: Action = "update" if self.store.config.installed(target.package) else "install"

            async def work(job: Job) -> None:
                try:
                    await install_bundle(self.updater, job, bundle)
                finally:
                    _discard(bundle)

            return self.jobs.start(target.package, action, work)
        except BaseException:
            _discard(bundle)
            raise

    def start_check(self) -> Job:
        return self.jobs.start(None, "check", self._check)

    async def latest_for(self, name: str) -> tuple[Content, Content]:
        installed = self.updater.installed(name)
        found, _ = await self.quick.latest(installed.remote, name, installed.branch)
        assert found is not None  # no ETag sent
        return installed, found

    # -- polling ---------------------------------------------------------------------------------
    async def _check(self, job: Job) -> None:
        """Ask every package's server; start an update job for each one that is out of date."""
        job.step = "check"
        packages = list(self.store.config.package)
        for index, installed in enumerate(packages, 1):
            name = installed.package
            try:
                found, etag = await self.fetcher.latest(
                    installed.remote, name, installed.branch, self._etags.get(name)
                )
            except OtakitError as exc:
                job.say(f"{name}: cannot check: {exc}")
                continue
            if etag:
                self._etags[name] = etag
            job.progress = index * 100 // max(1, len(packages))
            if found is None:
                job.say(f"{name} {installed.version}: unchanged on the server")
                continue
            if not is_upgrade(installed, found):
                job.say(f"{name} {installed.version} is up to date (server: {found.version})")
                continue
            if not self.store.config.auto_update:
                job.say(f"{name}: {found.version} is available (auto_update is off)")
                continue
            failed = self.updater.failed.reason(name, found.version)
            if failed is not None:
                job.say(
                    f"{name}: skipping {found.version}, which failed here before ({failed}); waiting for "
                    "a higher version (an explicit update still tries it)"
                )
                continue
            try:
                started = self.jobs.start(name, "update", functools.partial(self._update_latest, name))
            except ConflictError:
                job.say(f"{name}: {found.version} is available; a job for it is running already")
                self._etags.pop(name, None)  # ask again next time
                continue
            job.say(f"{name}: {found.version} is available; update job {started.id}")

    async def _update_latest(self, name: str, job: Job) -> None:
        await self.updater.update(job, name)

    async def _poll_forever(self, interval: float) -> None:
        await asyncio.sleep(random.uniform(0, min(interval, 60)))  # noqa: S311 - jitter, not secrecy
        while True:
            try:
                if not self.jobs.busy(None):
                    job = self.start_check()
                    log.info("poll: check job %s", job.id)
            except ConflictError:
                pass
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))  # noqa: S311

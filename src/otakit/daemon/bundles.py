"""Installing an offline bundle: the checks of an online install, then the ``Installer``'s steps."""

from __future__ import annotations

from pathlib import Path

import anyio.to_thread

from otakit.bundle import Bundle, BundledPackage
from otakit.content import Content
from otakit.daemon.installer import Installer, Planned
from otakit.daemon.jobs import Job
from otakit.errors import ValidationError

__all__ = ["install_bundle"]


async def install_bundle(installer: Installer, job: Job, bundle: Bundle) -> None:
    """Install what an offline bundle holds, in its order, with the checks of an online install.

    Before anything changes: every package's signature (with ``trusted_keys``), no downgrade of an
    installed package, every requirement met by the bundle or the device, every folder allowed.
    Then every zip needed comes out of the bundle, its sha256 checked, before any hook runs; and each
    package is installed as a downloaded zip is: inspect → BeforeUpdate → swap → AfterUpdate (rolled
    back when it fails) → record, journaled. The caller closes ``bundle``.
    """
    listed = bundle.packages
    target = listed[-1].content
    now = installer.store.config.installed(target.package)
    job.from_version, job.to_version = (now.version if now else None), target.version
    job.step = "verify"
    plan: list[tuple[BundledPackage, Planned]] = []  # what is not installed at its version already
    have: dict[str, Content] = {}
    for item in listed:
        content = item.content
        installer.verify(content)
        installed = installer.store.config.installed(content.package)
        if installed is not None and content.parsed_version < installed.parsed_version:
            raise ValidationError(
                f"the bundle's {content.package} {content.version} would downgrade the installed "
                f"{installed.version}; refusing"
            )
        for name, spec in content.requirements.items():
            found = have.get(name) or installer.store.config.installed(name)
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
        installer.store.check_local(content.package, planned.local)
        plan.append((item, planned))
    if installer.trusted:
        job.say(f"{len(listed)} package(s) in the bundle, every signature verified")
    async with installer.exclusive(job):
        if not plan:
            job.say("everything in the bundle is installed already; nothing to do")
            return
        # Every zip out of the bundle, its sha256 checked, before any package's hooks run.
        job.step = "extract"
        installer.downloads.mkdir(parents=True, exist_ok=True)
        zips = [
            installer.downloads / f"{item.file}.bundle-{item.content.sha256.lower()[:16]}" for item, _ in plan
        ]
        try:
            for (item, _), zip_path in zip(plan, zips, strict=True):
                zip_path.unlink(missing_ok=True)
                await anyio.to_thread.run_sync(bundle.extract, item, zip_path)
                job.say(f"extracted and verified {item.file}")
            for (_, planned), zip_path in zip(plan, zips, strict=True):
                await _install_from_bundle(installer, job, planned, zip_path)
        finally:
            for zip_path in zips:
                zip_path.unlink(missing_ok=True)


async def _install_from_bundle(installer: Installer, job: Job, planned: Planned, zip_path: Path) -> None:
    content = planned.content
    installed = installer.store.config.installed(content.package)
    if installed is not None and installed.parsed_version >= content.parsed_version:
        job.say(f"{content.package} {installed.version} is installed already; skipping")
        return
    action = "update" if installed else "install"
    recorded = planned.recorded()
    local = installer.store.local_path(recorded)
    job.say(
        f"{action} {content.package} {installed.version if installed else '(none)'} -> "
        f"{content.version} at {local}, from the bundle"
    )
    await installer.install_zip(job, zip_path, action, content, installed, recorded, local)

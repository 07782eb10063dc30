"""Versions that failed here: what automatic checks skip until a higher version is published.

An update whose package was at fault (refused, verified wrong, a hook failed, rolled back) is
remembered per package and version in ``state_dir/failed.json``. The poller does not try such a version
again by itself; an operator's explicit update or install still does, and a success forgets it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import anyio.to_thread

from otakit.fsutil import write_atomically
from otakit.versions import parse_version

__all__ = ["FailedVersions"]

log = logging.getLogger("otakit.daemon")
_KEEP_PER_PACKAGE = 20


def _key(version: str) -> str:
    return str(parse_version(version))  # 1.0 and 1.0.0 are one version


class FailedVersions:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._failed: dict[str, dict[str, str]] = {}
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s, which cannot be read: %s", path, exc)
            return
        if isinstance(data, dict):
            self._failed = {
                str(name): {str(v): str(why) for v, why in versions.items()}
                for name, versions in data.items()
                if isinstance(versions, dict)
            }

    def reason(self, package: str, version: str) -> str | None:
        """Why ``version`` of ``package`` failed here, or None if it did not."""
        return self._failed.get(package, {}).get(_key(version))

    async def remember(self, package: str, version: str, reason: str) -> None:
        versions = self._failed.setdefault(package, {})
        versions.pop(_key(version), None)
        versions[_key(version)] = reason
        for oldest in list(versions)[:-_KEEP_PER_PACKAGE]:
            del versions[oldest]
        await self._save()

    async def forget(self, package: str, version: str | None = None) -> None:
        """Forget one failed version of ``package`` (None: all of them)."""
        versions = self._failed.get(package)
        if not versions or (version is not None and _key(version) not in versions):
            return
        if version is None:
            del self._failed[package]
        else:
            del versions[_key(version)]
        await self._save()

    async def _save(self) -> None:
        data = json.dumps(self._failed, ensure_ascii=False, indent=1).encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await anyio.to_thread.run_sync(write_atomically, self.path, data)

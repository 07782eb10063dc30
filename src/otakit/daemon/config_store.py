"""The daemon's config file, which is also the record of what is installed.

Every change is an atomic rewrite: a temp file in the same folder, fsync, rename, fsync the folder. A
crash leaves the old file or the new one, never half of one. Relative paths (``local``, ``state_dir``)
are resolved against the config file's folder, as the original project's ``./test`` meant.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import anyio.to_thread

from otakit.content import Content
from otakit.device_config import DeviceConfig, parse_device_config
from otakit.errors import ValidationError
from otakit.fsutil import write_atomically

__all__ = ["ConfigStore"]

_CODE = Path(__file__).resolve().parents[1]  # the otakit package


class ConfigStore:
    """Holds the current config in memory; ``update`` serialises writers and persists before returning."""

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        self.folder = self.path.parent
        self.config = self.load()
        self._lock = asyncio.Lock()

    def load(self) -> DeviceConfig:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise ValidationError(f"cannot read the daemon config {self.path}: {exc.strerror}") from None
        return parse_device_config(data, f"daemon config {self.path}")

    def resolve(self, path: str) -> Path:
        return (self.folder / path).resolve() if path else self.folder

    def local_path(self, content: Content) -> Path:
        if not content.local:
            raise ValidationError(f"{content.package} has no 'local' install folder in its content.json")
        return self.resolve(content.local)

    def check_local(self, package: str, local: str) -> Path:
        """The folder ``local`` names for ``package``; ValidationError when installing there would move
        the daemon's own files away (its config, state, code or interpreter) or another package's.

        An install swaps the whole folder, so it may contain none of those, nor lie inside the state
        folder or the daemon's code, nor overlap another installed package's folder.
        """
        if not local:
            raise ValidationError(f"{package} has no 'local' install folder")
        path = self.resolve(local)
        if path == path.parent:
            raise ValidationError(f"refusing to install {package} at {path}: it is the root folder")
        own = {
            "the daemon's config file": self.path,
            "the daemon's state folder": self.state_dir,
            "the daemon's code": _CODE,
            "the daemon's interpreter": Path(sys.executable).resolve(),
        }
        for what, mine in own.items():
            if path == mine or path in mine.parents:
                raise ValidationError(f"refusing to install {package} at {path}: it holds {what} ({mine})")
        for what in ("the daemon's state folder", "the daemon's code"):
            if own[what] in path.parents:
                raise ValidationError(f"refusing to install {package} at {path}: it is inside {what}")
        for other in self.config.package:
            if other.package == package or not other.local:
                continue
            theirs = self.resolve(other.local)
            if path == theirs or path in theirs.parents or theirs in path.parents:
                raise ValidationError(
                    f"refusing to install {package} at {path}: it overlaps {other.package}'s folder {theirs}"
                )
        return path

    @property
    def state_dir(self) -> Path:
        return self.resolve(self.config.state_dir)

    async def save(self, config: DeviceConfig) -> None:
        async with self._lock:
            await self._write(config)

    async def _write(self, config: DeviceConfig) -> None:
        data = (json.dumps(config.to_json(), indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        mode = self.path.stat().st_mode & 0o777 if self.path.exists() else 0o600
        await anyio.to_thread.run_sync(write_atomically, self.path, data, mode)
        self.config = config

    async def record(self, content: Content) -> None:
        """Record ``content`` as the installed version of its package (the commit point of an install)."""
        async with self._lock:
            await self._write(self.config.with_package(content))

    async def forget(self, name: str) -> None:
        async with self._lock:
            await self._write(self.config.without_package(name))

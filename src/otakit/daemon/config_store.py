"""The daemon's config file, which is also the record of what is installed.

Every change is an atomic rewrite: a temp file in the same folder, fsync, rename, fsync the folder. A
crash leaves the old file or the new one, never half of one. Relative paths (``local``, ``state_dir``)
are resolved against the config file's folder, as the original project's ``./test`` meant.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import anyio.to_thread

from otakit.content import Content
from otakit.device_config import DeviceConfig, parse_device_config
from otakit.errors import ValidationError
from otakit.fsutil import write_atomically

__all__ = ["ConfigStore"]


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

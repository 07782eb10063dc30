"""Run the upload protocol in this process and die (``os._exit``) at a chosen step of the commit.

Used by ``test_crash_consistency``: ``python tests/crash_client.py SPEC.json``. The spec names the
database, the files folder, uploads to make first (``setup``), the ``target`` upload and ``crash_at``:
the number of the step of the target upload to die at (0 = never). A step is every file-system change
(``os.replace``, ``os.link``, ``os.unlink``, ``os.mkdir``, ``os.fsync``) and every database step of the
claim (taken, row put, commit). The labels of the steps passed are written to ``spec["report"]`` as they
happen, so the caller knows where the process died; without a crash the process exits 0.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from otakit.content import parse_content
from otakit.server.blobstore import LocalBlobStore
from otakit.server.inflight import InFlight
from otakit.server.publish import publish
from otakit.server.repository import Claim, Repository, VersionKey, VersionRow, open_repository

CRASH_EXIT = 137


def package_bytes(seed: int, size: int) -> bytes:
    """The file of an upload, the same in the test and here."""
    return random.Random(seed).randbytes(size)


def content_text(upload: dict[str, Any]) -> str:
    data = package_bytes(upload["seed"], upload["size"])
    return json.dumps(
        {
            "package": upload["package"],
            "version": upload["version"],
            "branch": upload["branch"],
            "sha256": hashlib.sha256(data).hexdigest(),
            "description": f"seed {upload['seed']}",
        }
    )


class Steps:
    """Counts steps once armed and dies at step ``crash_at``."""

    def __init__(self, crash_at: int, report: Path, root: Path) -> None:
        self.crash_at = crash_at
        self.count = 0
        self.armed = False
        self._report = open(report, "w")  # noqa: SIM115 (open until the process ends, or dies)
        self._root = str(root)

    def label(self, name: str, *paths: object) -> str:
        shown = []
        for path in paths:
            text = os.fspath(path) if isinstance(path, str | os.PathLike) else f"fd {path}"
            text = text.replace(self._root, "<root>")
            shown.append(re.sub(r"[0-9a-f]{32}", "<id>", text))
        return f"{name}({', '.join(shown)})" if shown else name

    def step(self, label: str) -> None:
        if not self.armed:
            return
        self.count += 1
        self._report.write(label + "\n")
        self._report.flush()
        if self.count == self.crash_at:
            os._exit(CRASH_EXIT)


def instrument_os(steps: Steps) -> None:
    def wrap(name: str) -> None:
        original: Callable[..., Any] = getattr(os, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            paths = [a for a in args if isinstance(a, str | os.PathLike)]
            if name == "fsync":
                fd = args[0]
                try:
                    paths = [os.readlink(f"/proc/self/fd/{fd}")]
                except OSError:
                    paths = [fd]
            steps.step(steps.label(f"os.{name}", *paths))
            return original(*args, **kwargs)

        setattr(os, name, wrapper)

    for name in ("replace", "rename", "link", "unlink", "mkdir", "fsync"):
        wrap(name)


def instrument_repo(repo: Repository, steps: Steps) -> None:
    original = repo.claim

    @asynccontextmanager
    async def claim(key: VersionKey) -> AsyncIterator[Claim]:
        async with original(key) as taken:
            steps.step("db: after claim")
            put = taken.put

            async def counted_put(row: VersionRow) -> None:
                steps.step("db: before put")
                await put(row)
                steps.step("db: after put")

            taken.put = counted_put  # type: ignore[method-assign]
            yield taken
            steps.step("db: before commit")
        steps.step("db: after commit")

    repo.claim = claim  # type: ignore[method-assign]


async def upload(repo: Repository, store: LocalBlobStore, inflight: InFlight, spec: dict[str, Any]) -> None:
    text = content_text(spec)
    content = parse_content(text)
    data = package_bytes(spec["seed"], spec["size"])
    assert content.sha256_matches(hashlib.sha256(data).hexdigest())
    incoming = await store.begin(await inflight.begin())
    await incoming.write(data)
    canonical = json.dumps(content.raw, ensure_ascii=False, separators=(",", ":"))
    await publish(repo, store, inflight, content, incoming, canonical, force=spec["force"])


async def main(spec: dict[str, Any]) -> None:
    root = Path(spec["files_dir"])
    steps = Steps(spec["crash_at"], Path(spec["report"]), root)
    instrument_os(steps)
    root.mkdir(parents=True, exist_ok=True)
    store = LocalBlobStore(root)
    async with open_repository(spec["database_url"]) as repo:
        await repo.upgrade()
        instrument_repo(repo, steps)
        inflight = InFlight(repo)
        for before in spec["setup"]:
            await upload(repo, store, inflight, before)
        steps.armed = True
        await upload(repo, store, inflight, spec["target"])
        steps.armed = False


if __name__ == "__main__":
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))

"""A server killed at any moment of an upload comes back with the old state or the new one, whole.

Two tests per backend (DESIGN.md, "Upload, exactly", points 4 and 5):

- ``test_sigkill_mid_upload``: a real uvicorn server is SIGKILLed many times at random moments of real
  uploads (new versions, forced replacements, ``1.0`` <-> ``1.0.0``), restarted on the same database
  and folder, and checked through the HTTP API and on disk.
- ``test_crash_at_every_step``: the upload protocol runs in a subprocess (``tests/crash_client.py``)
  that dies at step 1, 2, 3, ... of the commit; recovery then runs as the server does at start. No
  timing involved: every step is hit.

The invariant, checked after each restart:

- every row's file is served (``/otafiles/…``) and laid out (``<root>/<pkg>/<branch>/…zip``) with the
  row's sha256; the layout holds nothing else (no file without its row, no temp link);
- ``.incoming`` is empty, no upload is left in flight in the database, and ``.objects`` holds exactly
  the rows' objects, each the very file (hard link) of its layout entry;
- the key of the interrupted upload holds the previous row or the uploaded one, nothing else, and an
  upload that was answered 200 is there.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
import pytest
from fastapi import FastAPI

from otakit.server.app import create_app
from otakit.server.repository import open_repository
from otakit.server.repository.uploads import UploadEntry
from otakit.server.settings import ServerSettings
from otakit.versions import version_key
from tests.crash_client import CRASH_EXIT, content_text
from tests.databases import BACKENDS, database_url
from tests.servers import RunningServer, start_server

pytestmark = pytest.mark.slow

TOKEN = "test-token"
BRANCH = "master"
KILLS_PER_BACKEND = int(os.environ.get("OTAKIT_TEST_KILLS", "30"))  # more for a longer soak
_RECOVERED = re.compile(
    r"recovered (\d+) interrupted upload\(s\), removed (\d+) orphan object\(s\) and (\d+) partial upload\(s\)"
)

Key = tuple[str, str, str]  # package, branch, version key


@dataclass(frozen=True)
class Stored:
    """What one row holds: its version string and its content.json (canonical JSON)."""

    version: str
    content: str

    @property
    def sha256(self) -> str:
        return str(json.loads(self.content)["sha256"]).lower()


def stored(version: str, content: dict[str, Any] | str) -> Stored:
    value = json.loads(content) if isinstance(content, str) else content
    return Stored(version, json.dumps(value, sort_keys=True))


def key_of(package: str, version: str, branch: str = BRANCH) -> Key:
    return (package, branch, version_key(version))


# --- the invariant ------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def check_store(client: httpx.Client, files_dir: Path, packages: Iterable[str]) -> dict[Key, Stored]:
    """Check that rows and files agree, through the API and on disk; return the rows found."""
    rows: dict[Key, Stored] = {}
    layout_expected: set[str] = set()
    for package in packages:
        response = client.get("/getVersion", params={"package": package})
        if response.status_code == 404:
            continue
        assert response.status_code == 200, response.text
        for item in response.json()["list"]:
            name, branch, version = item["name"], item["branch"], item["version"]
            row = stored(version, item["content"])
            key = key_of(name, version, branch)
            assert key not in rows, f"two rows for one version key: {rows[key]} and {row}"
            rows[key] = row
            file_name = f"{name}-{branch}-{version}.zip"
            served = client.get(f"/otafiles/{name}/{branch}/{file_name}")
            assert served.status_code == 200, f"row {name} {version} without its file: {served.text}"
            assert hashlib.sha256(served.content).hexdigest() == row.sha256, f"{file_name} served wrong bytes"
            layout = files_dir / name / branch / file_name
            assert layout.is_file(), f"row {name} {version} without its layout file {layout}"
            assert _sha256_file(layout) == row.sha256, f"{layout} does not match its row"
            assert layout.stat().st_mode & 0o777 == 0o644
            layout_expected.add(f"{name}/{branch}/{file_name}")

    laid_out = {
        path.relative_to(files_dir).as_posix(): path.stat().st_ino
        for path in files_dir.rglob("*")
        if not path.relative_to(files_dir).parts[0].startswith(".") and not path.is_dir()
    }
    assert set(laid_out) == layout_expected, "the layout holds files without rows (or lacks some)"
    assert list((files_dir / ".incoming").iterdir()) == [], "temp files left in .incoming"
    objects = {path.stat().st_ino for path in (files_dir / ".objects").iterdir()}
    assert len(objects) == len(rows), f"{len(objects)} objects for {len(rows)} rows"
    assert objects == set(laid_out.values()), "layout entries are not the rows' objects"
    return rows


def check_no_uploads_left(url: str) -> None:
    """Recovery ended every upload in flight: the database's ``uploads`` table is empty."""

    async def entries() -> list[UploadEntry]:
        async with open_repository(url) as repo:
            return await repo.uploads.all()

    left = anyio.run(entries)
    assert left == [], f"uploads still in flight after recovery: {left}"


def check_outcome(rows: dict[Key, Stored], allowed: dict[Key, set[Stored | None]]) -> None:
    """Each key holds one of its allowed states (``None``: no row); no other key has a row."""
    for key in rows.keys() - allowed.keys():
        raise AssertionError(f"unexpected row {key}: {rows[key]}")
    for key, states in allowed.items():
        assert rows.get(key) in states, f"{key} holds {rows.get(key)}, expected one of {states}"


# --- SIGKILL during real uploads ----------------------------------------------------------------


@dataclass
class Attempt:
    """One upload sent from a thread, and what became of it."""

    package: str
    version: str
    data: bytes
    force: bool
    content_first: bool
    seed: int
    status: int | None = None
    answer: str = ""
    error: str | None = None
    body_started: threading.Event = field(default_factory=threading.Event)
    body_sent: threading.Event = field(default_factory=threading.Event)
    times: dict[str, float] = field(default_factory=dict)

    @cached_property
    def content(self) -> dict[str, Any]:
        return {
            "package": self.package,
            "version": self.version,
            "branch": BRANCH,
            "sha256": hashlib.sha256(self.data).hexdigest(),
            "description": f"attempt {self.seed}",
        }

    @property
    def key(self) -> Key:
        return key_of(self.package, self.version)

    @property
    def stored(self) -> Stored:
        return stored(self.version, self.content)

    def _parts(self, boundary: str) -> tuple[bytes, bytes, bytes]:
        """The multipart body around the file's bytes: before, (file), after."""
        content = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="content"\r\n'
            f"Content-Type: application/json\r\n\r\n{json.dumps(self.content)}\r\n"
        ).encode()
        file_head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="package.zip"\r\n'
            "Content-Type: application/zip\r\n\r\n"
        ).encode()
        end = f"--{boundary}--\r\n".encode()
        if self.content_first:
            return content + file_head, b"\r\n" + end, b""
        return file_head, b"\r\n" + content, end

    def _mark(self, event: str) -> None:
        self.times[event] = time.monotonic()

    def _body(self, before: bytes, after: bytes, trailer: bytes) -> Iterator[bytes]:
        self._mark("body started")
        self.body_started.set()
        yield before
        view = memoryview(self.data)
        for offset in range(0, len(view), 64 * 1024):
            yield bytes(view[offset : offset + 64 * 1024])
        yield after + trailer
        self._mark("body sent")  # resumed once the last chunk is written
        self.body_sent.set()

    def send(self, url: str) -> None:
        """Upload (in a thread); never raises: the outcome is recorded."""
        boundary = uuid.uuid4().hex
        before, after, trailer = self._parts(boundary)
        length = len(before) + len(self.data) + len(after) + len(trailer)
        headers = {
            "Authorization": f"Bearer {TOKEN}",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(length),
        }
        params = {"force": "1"} if self.force else {}
        try:
            with httpx.Client(base_url=url, timeout=30) as client:
                response = client.put(
                    "/upload", params=params, headers=headers, content=self._body(before, after, trailer)
                )
                self._mark("answered")
                self.status, self.answer = response.status_code, response.text
        except httpx.TransportError as exc:
            self.error = repr(exc)
        except Exception as exc:  # reported by the test, not lost in the thread
            self.error = f"unexpected {exc!r}"


def _timed_upload(server: RunningServer, attempt: Attempt) -> tuple[float, float]:
    """Upload; return how long the body took to send and how long the answer took after it."""
    attempt.send(server.url)
    assert attempt.status == 200, attempt.error or attempt.answer
    times = attempt.times
    return times["body sent"] - times["body started"], times["answered"] - times["body sent"]


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _next_attempt(rng: random.Random, number: int, rows: dict[Key, Stored], mode: str) -> Attempt:
    # Small files when aiming at the commit, so that the server has nothing left to read.
    size = rng.randint(1, 8) * 1024 if mode == "commit" else rng.randint(1, 3) * 1024 * 1024
    data = rng.randbytes(size)
    content_first = rng.random() < 0.5
    kind = rng.choice(["new", "new", "force-same", "force-same", "version-change", "version-change"])
    existing_a = sorted(row.version for (package, _, _), row in rows.items() if package == "pkg-a")
    if kind == "new" or not existing_a:
        return Attempt("pkg-a", f"2.{number}", data, rng.random() < 0.3, content_first, number)
    if kind == "force-same":
        return Attempt("pkg-a", rng.choice(existing_a), data, True, content_first, number)
    current = rows.get(key_of("pkg-b", "1.0"))
    version = "1.0.0" if current is None or current.version == "1.0" else "1.0"
    return Attempt("pkg-b", version, data, True, content_first, number)


def _phase(attempt: Attempt, outcome: str, recovered: tuple[int, int, int]) -> str:
    journals, _, incoming = recovered
    if attempt.status == 200:
        return "after the answer (durability)"
    if journals:
        return f"in the commit, recovery {'rolled forward' if outcome == 'new' else 'rolled back'}"
    if incoming:
        return "while the file streamed in"
    if outcome == "new":
        return "committed, before the answer"
    return "before the server read the file part"


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_mid_upload(backend: str, tmp_path: Path) -> None:
    seed = int(os.environ.get("OTAKIT_TEST_SEED") or random.randrange(2**32))  # printed, to replay a run
    rng = random.Random(seed)
    print(f"\n[{backend}] random seed {seed}", end="")
    phases: Counter[str] = Counter()
    with database_url(backend, tmp_path) as url:
        server = start_server(tmp_path, url)
        files_dir = server.files_dir
        try:
            # The starting state, and how long an upload takes here.
            large = [
                _timed_upload(server, Attempt("pkg-a", "1.0", rng.randbytes(2 << 20), False, True, -1)),
                _timed_upload(server, Attempt("pkg-b", "1.0", rng.randbytes(2 << 20), False, False, -2)),
                _timed_upload(server, Attempt("pkg-a", "1.1", rng.randbytes(2 << 20), False, True, -3)),
            ]
            small = [
                _timed_upload(server, Attempt("pkg-c", f"0.{n}", rng.randbytes(4096), False, True, -10 - n))
                for n in range(3)
            ]
            # A random kill in "during" lands anywhere from the first byte sent to the answer of a large
            # upload; in "commit", between the last byte of a small upload and its answer: the commit.
            upload_time = _median([send + answer for send, answer in large])
            commit_time = _median([answer for _, answer in small])
            print(
                f"\n[{backend}] a 2 MiB upload takes {upload_time * 1000:.1f} ms from its first byte, "
                f"a 4 KiB one {commit_time * 1000:.1f} ms from its last byte to the answer"
            )
            with server.client() as client:
                rows = check_store(client, files_dir, ["pkg-a", "pkg-b", "pkg-c"])

            for number in range(KILLS_PER_BACKEND):
                mode = rng.choices(["during", "commit", "answered"], weights=[45, 45, 10])[0]
                attempt = _next_attempt(rng, number, rows, mode)
                thread = threading.Thread(target=attempt.send, args=(server.url,))
                thread.start()
                if mode == "during":
                    attempt.body_started.wait(30)
                    time.sleep(rng.uniform(0, upload_time))
                elif mode == "commit":
                    attempt.body_sent.wait(30)
                    time.sleep(rng.uniform(0, commit_time))
                else:
                    thread.join(30)
                server.kill()
                thread.join(30)
                assert not thread.is_alive(), "the upload did not end when the server died"
                assert attempt.error is None or not attempt.error.startswith("unexpected"), attempt.error
                assert attempt.status in (None, 200), f"upload answered {attempt.status}: {attempt.answer}"

                server = start_server(tmp_path, url)
                match = _RECOVERED.search(server.log_text())
                recovered = (int(match[1]), int(match[2]), int(match[3])) if match else (0, 0, 0)
                with server.client() as client:
                    found = check_store(client, files_dir, ["pkg-a", "pkg-b", "pkg-c"])
                check_no_uploads_left(url)
                allowed: dict[Key, set[Stored | None]] = {key: {row} for key, row in rows.items()}
                old = rows.get(attempt.key)
                allowed[attempt.key] = {attempt.stored} if attempt.status == 200 else {old, attempt.stored}
                check_outcome(found, allowed)
                outcome = "new" if found.get(attempt.key) == attempt.stored else "old"
                phases[_phase(attempt, outcome, recovered)] += 1
                rows = found

            # Whichever of 1.0 / 1.0.0 the row holds now, only its file is laid out.
            b_row = rows[key_of("pkg-b", "1.0")]
            b_files = {path.name for path in (files_dir / "pkg-b" / BRANCH).glob("*.zip")}
            assert b_files == {f"pkg-b-{BRANCH}-{b_row.version}.zip"}
        finally:
            server.stop()
    print(f"[{backend}] {KILLS_PER_BACKEND} kills landed:")
    for phase, count in sorted(phases.items()):
        print(f"[{backend}]   {count:3d}  {phase}")


# --- a crash at every step of the commit --------------------------------------------------------


def _upload(
    package: str, version: str, seed: int, *, force: bool = False, size: int = 65536
) -> dict[str, Any]:
    return {
        "package": package,
        "branch": BRANCH,
        "version": version,
        "seed": seed,
        "size": size,
        "force": force,
    }


def _stored_upload(upload: dict[str, Any]) -> Stored:
    return stored(upload["version"], content_text(upload))


_SETUP = [_upload("pkg-a", "1.0", 1), _upload("pkg-b", "1.0", 2)]
_SCENARIOS = {
    "new-version": _upload("pkg-a", "2.0", 3),
    "force-same-version": _upload("pkg-a", "1.0", 4, force=True),
    "force-version-change": _upload("pkg-b", "1.0.0", 5, force=True),
}


def _run_client(spec: dict[str, Any], folder: Path) -> tuple[int, list[str]]:
    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps(spec))
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("crash_client.py")), str(spec_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode in (0, CRASH_EXIT), done.stderr
    steps = Path(spec["report"]).read_text().splitlines()
    return done.returncode, steps


class _PortalTransport(httpx.BaseTransport):
    """Serves a synchronous ``httpx.Client`` from an app running in a blocking portal's event loop."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal, app: FastAPI) -> None:
        self._portal = portal
        self._asgi = httpx.ASGITransport(app=app)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def call() -> httpx.Response:
            response = await self._asgi.handle_async_request(request)
            body = await response.aread()
            return httpx.Response(response.status_code, headers=response.headers, content=body)

        return self._portal.call(call)


def _recover_and_check(
    url: str, files_dir: Path, allowed: dict[Key, set[Stored | None]]
) -> dict[Key, Stored]:
    """Start the app as the server does (its start-up runs recovery), then check through it and on disk."""
    app = create_app(ServerSettings(database_url=url, files_dir=files_dir, upload_tokens=[TOKEN]))
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(app.router.lifespan_context(app)),
        httpx.Client(transport=_PortalTransport(portal, app), base_url="http://otakit") as client,
    ):
        rows = check_store(client, files_dir, ["pkg-a", "pkg-b"])
    check_no_uploads_left(url)
    check_outcome(rows, allowed)
    return rows


@pytest.mark.parametrize("scenario", list(_SCENARIOS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_crash_at_every_step(backend: str, scenario: str, tmp_path: Path) -> None:
    target = _SCENARIOS[scenario]
    new = _stored_upload(target)
    before = {key_of(u["package"], u["version"]): _stored_upload(u) for u in _SETUP}
    old = before.get(key_of(target["package"], target["version"]))

    def spec(folder: Path, url: str, crash_at: int) -> dict[str, Any]:
        return {
            "database_url": url,
            "files_dir": str(folder / "files"),
            "setup": _SETUP,
            "target": target,
            "crash_at": crash_at,
            "report": str(folder / "steps.txt"),
        }

    # A run without a crash lists the steps, and shows the new state.
    clean = tmp_path / "clean"
    clean.mkdir()
    with database_url(backend, clean) as url:
        code, steps = _run_client(spec(clean, url, 0), clean)
        assert code == 0
        after = {**before, key_of(target["package"], target["version"]): new}
        _recover_and_check(url, clean / "files", {key: {row} for key, row in after.items()})
    assert "db: after commit" in steps
    committed_at = steps.index("db: after commit") + 1
    assert any(step.startswith("os.link(") for step in steps[: committed_at - 1])

    outcomes: list[str] = []
    for crash_at in range(1, len(steps) + 1):
        folder = tmp_path / f"crash-{crash_at}"
        folder.mkdir()
        with database_url(backend, folder) as url:
            code, passed = _run_client(spec(folder, url, crash_at), folder)
            assert code == CRASH_EXIT, f"did not die at step {crash_at}"
            assert passed == steps[:crash_at], "the steps differ from run to run"
            # Died before step `crash_at` ran: the commit happened iff the step after it was reached.
            expected = new if crash_at >= committed_at else old
            allowed: dict[Key, set[Stored | None]] = {key: {row} for key, row in before.items()}
            allowed[key_of(target["package"], target["version"])] = {expected}
            _recover_and_check(url, folder / "files", allowed)
        state = "new" if expected == new else "old"
        outcomes.append(f"{crash_at:3d}  died before {steps[crash_at - 1]}: {state} state")
    print(f"\n[{backend} {scenario}] crashed at each of {len(steps)} steps:\n" + "\n".join(outcomes))

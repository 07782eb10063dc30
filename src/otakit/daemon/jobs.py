"""Jobs: what the daemon is doing or did, one at a time per package."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from otakit.errors import ConflictError, NotFoundError, OtakitError

__all__ = ["Job", "JobObserver", "JobRegistry"]

log = logging.getLogger("otakit.daemon")

Action = Literal["install", "update", "rollback", "remove", "check"]
State = Literal["queued", "running", "succeeded", "failed", "rolled_back"]
_MAX_LOG_LINES = 2000
_KEEP_FINISHED = 200
_WATCHED = frozenset({"state", "step", "progress"})

JobObserver = Callable[["Job"], None]


@dataclass
class Job:
    id: str
    package: str | None
    action: Action
    state: State = "queued"
    step: str = ""
    from_version: str | None = None
    to_version: str | None = None
    progress: int = 0
    error: str | None = None
    downloaded: int = 0  # bytes downloaded for it (a delta's, or the zips')
    delta: bool = False  # whether the package came as a delta rather than its zip
    log: list[str] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    observer: JobObserver | None = field(default=None, repr=False, compare=False)

    def __setattr__(self, name: str, value: Any) -> None:
        # Observers learn of every change of state, step or progress as it is made (no polling).
        changed = name in _WATCHED and self.__dict__.get(name, value) != value
        object.__setattr__(self, name, value)
        if changed and self.observer is not None:
            try:
                self.observer(self)
            except Exception:
                log.exception("job %s: an observer failed", self.id)

    def say(self, line: str) -> None:
        """Add a line to the job's log (and the daemon's)."""
        log.info("job %s (%s %s): %s", self.id, self.action, self.package or "all", line)
        if len(self.log) < _MAX_LOG_LINES:
            self.log.append(line)
        elif len(self.log) == _MAX_LOG_LINES:
            self.log.append("… (log truncated)")

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "package": self.package, "action": self.action, "state": self.state,
            "step": self.step, "from_version": self.from_version, "to_version": self.to_version,
            "progress": self.progress, "error": self.error, "downloaded": self.downloaded,
            "delta": self.delta, "log": list(self.log),
        }  # fmt: skip

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "failed", "rolled_back")


class JobRegistry:
    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._ids = itertools.count(1)
        self._prefix = format(int(time.time()), "x")
        self._observers: list[JobObserver] = []

    def observe(self, observer: JobObserver) -> None:
        """Call ``observer(job)`` (on the event loop, synchronously: keep it cheap) whenever a job's
        ``state``, ``step`` or ``progress`` changes."""
        self._observers.append(observer)

    def _changed(self, job: Job) -> None:
        for observer in self._observers:
            observer(job)

    def list(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda job: (job.created, job.id), reverse=True)

    def get(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFoundError(f"no job {job_id}") from None

    def busy(self, package: str | None) -> bool:
        """Whether a job for ``package`` (None: a check of every package) is in hand."""
        return any(not job.finished and job.package == package for job in self._jobs.values())

    def start(self, package: str | None, action: Action, work: Callable[[Job], Awaitable[None]]) -> Job:
        """Run ``work(job)`` in the background; ConflictError if the package has a job in hand.

        A check (``package`` None) only reads, and starts the update jobs it finds: it holds no package.
        ``work`` sets the final state; an exception it lets out marks the job failed.
        """
        if self.busy(package):
            raise ConflictError(f"a job for {package or 'the device'} is running; wait for it to finish")
        job = Job(f"{self._prefix}-{next(self._ids)}", package, action, observer=self._changed)
        self._jobs[job.id] = job
        self._tasks[job.id] = asyncio.create_task(self._run(job, work), name=f"otakit-job-{job.id}")
        self._prune()
        return job

    async def _run(self, job: Job, work: Callable[[Job], Awaitable[None]]) -> None:
        job.state = "running"
        try:
            await work(job)
            if not job.finished:
                job.progress = 100  # before the state, so that observers see a finished job whole
                job.state = "succeeded"
        except asyncio.CancelledError:
            job.error = "cancelled: the daemon is stopping"
            job.say(job.error)
            if not job.finished:
                job.state = "failed"
        except Exception as exc:
            if not isinstance(exc, OtakitError | OSError):
                log.exception("job %s failed unexpectedly", job.id)
            job.error = str(exc) or type(exc).__name__
            job.say(f"failed: {job.error}")
            if not job.finished:
                job.state = "failed"
        finally:
            if job.state == "succeeded":
                job.progress = 100
            self._tasks.pop(job.id, None)

    def _prune(self) -> None:
        finished = [job for job in self.list() if job.finished]
        for job in finished[_KEEP_FINISHED:]:
            self._jobs.pop(job.id, None)

    async def drain(self, cancel_steps: tuple[str, ...] = ()) -> None:
        """Wait for every job in hand to end; jobs in one of ``cancel_steps`` (which change nothing on
        the device) are cancelled, the others finish or roll back their step."""
        for job_id, task in list(self._tasks.items()):
            if self._jobs[job_id].step in cancel_steps:
                task.cancel()
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

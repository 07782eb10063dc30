"""A file's sha256, computed by a background thread while the caller goes on."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

__all__ = ["FileDigest"]

_PIECE = 1024 * 1024


class FileDigest:
    """The sha256 of a file, computed by a background thread (hashlib and reads release the GIL, so it
    runs on its own core while the file is being sent)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._done = threading.Event()
        self._stop = False
        self._value: str | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._run, name="otakit-sha256", daemon=True).start()

    def _run(self) -> None:
        try:
            digest = hashlib.sha256()
            buffer = bytearray(_PIECE)
            view = memoryview(buffer)
            with open(self._path, "rb", buffering=0) as file:
                while not self._stop and (read := file.readinto(buffer)):
                    digest.update(view[:read])
            self._value = digest.hexdigest()
        except BaseException as exc:  # handed to the caller of result()
            self._error = exc
        finally:
            self._done.set()

    def result(self) -> str:
        self._done.wait()
        if self._error is not None:
            raise self._error
        if self._value is None:
            raise RuntimeError("the digest was cancelled")
        return self._value

    def cancel(self) -> None:
        """Stop reading (the thread ends at its next piece); result() then raises unless it was done."""
        self._stop = True

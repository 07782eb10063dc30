"""Disk helpers of the local blob store and its layout: durable folders, flocks, an O_DIRECT writer."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
from pathlib import Path

from otakit.fsutil import fsync_dir, write_all

__all__ = ["DIR_MODE", "FILE_MODE", "DirectWriter", "mkdirs", "try_lock"]

_ALIGN = 4096
_DIRECT_BLOCK = 4 * 1024 * 1024
DIR_MODE = 0o755
FILE_MODE = 0o644


def mkdirs(path: Path) -> None:
    """Create ``path`` and missing parents, each made durable in its parent."""
    if path.is_dir():
        return
    mkdirs(path.parent)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=DIR_MODE)
        fsync_dir(path.parent)


def try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


class DirectWriter:
    """Writes a file sequentially through O_DIRECT from one reused, page-aligned 4 MiB buffer.

    The bytes go to the disk while the upload streams in, instead of filling the page cache (whose
    fresh pages are slow to touch on the VMs we run on) and being flushed by the final fsync. Where the
    file system refuses O_DIRECT (tmpfs, some overlays) it writes normally.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.direct = self._set_direct(True)
        self._buffer = mmap.mmap(-1, _DIRECT_BLOCK) if self.direct else None
        self._fill = 0

    def _set_direct(self, on: bool) -> bool:
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)
        except OSError:
            return False
        return on

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._buffer is None:
            write_all(self.fd, data)
            return
        view = memoryview(data)
        while view:
            take = min(len(view), _DIRECT_BLOCK - self._fill)
            self._buffer[self._fill : self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == _DIRECT_BLOCK:
                self._flush(_DIRECT_BLOCK)

    def _flush(self, length: int) -> None:
        assert self._buffer is not None
        block = memoryview(self._buffer)[:length]
        try:
            written = os.write(self.fd, block)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            written = 0
        if written != length:  # refused or cut short: finish without O_DIRECT
            self._set_direct(False)
            write_all(self.fd, block[written:])
        block.release()
        self._fill = 0

    def finish(self, size: int) -> None:
        """Write what is buffered; the file is then exactly ``size`` bytes long."""
        if self._buffer is None or self._fill == 0:
            return
        padded = -(-self._fill // _ALIGN) * _ALIGN  # O_DIRECT writes whole aligned blocks
        self._buffer[self._fill : padded] = bytes(padded - self._fill)
        self._flush(padded)
        os.ftruncate(self.fd, size)

    def close(self) -> None:
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None

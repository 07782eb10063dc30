"""Stream bytes from the event loop into a blocking writer, in large blocks, off the loop.

Two buffers, allocated once and reused: the loop fills one while a worker thread hands the other to
the writer (which hashes and writes it), so disk work overlaps the network and memory stays flat at two
blocks. Reusing the buffers matters: a fresh megabyte-sized ``bytearray`` per block costs page faults
on every block, which made downloads several times slower than curl's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable

__all__ = ["AsyncBlockWriter", "BlockWriter"]


class BlockWriter:
    """``write`` is called in a worker thread with a memoryview of one block; it must not keep it.
    ``on_written``, if given, is called on the loop after each block with the bytes written so far.

    ``feed`` may wait for the previous block to be written; ``flush`` hands over what is buffered and
    waits until everything fed is written. An exception raised by ``write`` comes out of the next
    ``feed`` or ``flush``. After an error or a cancellation, ``abandon`` waits for a block still in the
    thread, so that the caller may close what ``write`` writes to.
    """

    def __init__(
        self,
        write: Callable[[memoryview], None],
        block_size: int,
        on_written: Callable[[int], None] | None = None,
    ) -> None:
        self._write = write
        self._on_written = on_written
        self._buffers = (bytearray(block_size), bytearray(block_size))
        self._filling = 0
        self._used = 0
        self._pending: asyncio.Future[None] | None = None
        self.received = 0  # bytes fed so far
        self.written = 0  # bytes the writer has taken

    async def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            buffer = self._buffers[self._filling]
            take = min(len(view), len(buffer) - self._used)
            buffer[self._used : self._used + take] = view[:take]
            self._used += take
            self.received += take
            view = view[take:]
            if self._used == len(buffer):
                await self._hand_over()

    async def flush(self) -> None:
        await self._hand_over()
        await self._wait()

    async def abandon(self) -> None:
        with contextlib.suppress(Exception):
            await self._wait()
        self._used = 0

    async def _hand_over(self) -> None:
        await self._wait()  # the other buffer is free once its block is written
        if self._used:
            block = memoryview(self._buffers[self._filling])[: self._used]
            self._pending = self._start(block)
            self._pending.add_done_callback(functools.partial(self._done, size=self._used))
            self._filling ^= 1
            self._used = 0

    def _start(self, block: memoryview) -> asyncio.Future[None]:
        return asyncio.get_running_loop().run_in_executor(None, self._write, block)

    def _done(self, done: asyncio.Future[None], size: int) -> None:
        if done.cancelled() or done.exception() is not None:
            return
        self.written += size
        if self._on_written is not None:
            self._on_written(self.written)

    async def _wait(self) -> None:
        pending = self._pending
        if pending is None:
            return
        try:
            # Shielded: a cancelled caller must not lose track of a block the thread is still writing.
            await asyncio.shield(pending)
        finally:
            if pending.done():
                self._pending = None


class AsyncBlockWriter(BlockWriter):
    """A ``BlockWriter`` whose writer is a coroutine function, run as a task while the loop fills the
    other buffer (it does its own thread hops, e.g. hashing in one while a blob store writes)."""

    def __init__(
        self,
        write: Callable[[memoryview], Awaitable[None]],
        block_size: int,
        on_written: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(lambda block: None, block_size, on_written)
        self._awrite = write

    def _start(self, block: memoryview) -> asyncio.Future[None]:
        async def run() -> None:
            await self._awrite(block)

        return asyncio.ensure_future(run())

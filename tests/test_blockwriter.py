"""BlockWriter: bytes from the loop reach a blocking writer in order, in full blocks from two reused
buffers, with errors and cancellation handled."""

from __future__ import annotations

import os
import threading
import time

import anyio
import pytest

from otakit.blockwriter import BlockWriter

pytestmark = pytest.mark.anyio


class Recorder:
    def __init__(self, delay: float = 0.0) -> None:
        self.data = bytearray()
        self.sizes: list[int] = []
        self.buffers: set[int] = set()
        self.threads: set[int] = set()
        self.delay = delay

    def write(self, block: memoryview) -> None:
        time.sleep(self.delay)
        self.data += block
        self.sizes.append(len(block))
        self.buffers.add(id(block.obj))
        self.threads.add(threading.get_ident())


async def test_bytes_arrive_in_order_in_full_blocks_from_two_buffers() -> None:
    source = os.urandom(1000 * 37 + 11)
    recorder = Recorder(delay=0.001)
    written: list[int] = []
    writer = BlockWriter(recorder.write, 1000, written.append)
    for start in range(0, len(source), 37):  # pieces that do not divide the block size
        await writer.feed(source[start : start + 37])
    await writer.flush()
    assert recorder.data == source
    assert recorder.sizes == [1000] * 37 + [11]
    assert len(recorder.buffers) == 2  # the same two buffers, over and over
    assert threading.get_ident() not in recorder.threads  # never on the loop's thread
    assert written == [1000 * n for n in range(1, 38)] + [len(source)]
    assert writer.received == writer.written == len(source)


async def test_a_large_piece_spans_several_blocks() -> None:
    recorder = Recorder()
    writer = BlockWriter(recorder.write, 64)
    await writer.feed(b"x" * 200)
    await writer.flush()
    assert recorder.sizes == [64, 64, 64, 8]


async def test_an_error_of_the_writer_comes_out_of_the_next_call() -> None:
    calls = 0

    def failing(block: memoryview) -> None:
        nonlocal calls
        calls += 1
        raise OSError(28, "No space left on device")

    writer = BlockWriter(failing, 10)
    await writer.feed(b"a" * 10)  # handed over: the thread fails in the background
    with pytest.raises(OSError, match="No space left"):
        await writer.feed(b"b" * 10)  # waits for the first block before handing over the second
    await writer.abandon()
    assert calls == 1


async def test_a_cancelled_caller_can_still_wait_for_the_block_in_the_thread() -> None:
    release = threading.Event()
    finished = threading.Event()

    def slow(block: memoryview) -> None:
        release.wait(10)
        finished.set()

    writer = BlockWriter(slow, 10)
    with anyio.move_on_after(0.1) as scope:
        await writer.feed(b"a" * 10)
        await writer.flush()  # blocked in the thread: the scope cancels this wait
    assert scope.cancelled_caught
    assert not finished.is_set()
    threading.Timer(0.1, release.set).start()
    await writer.abandon()
    assert finished.is_set()  # abandon returned only after the thread let go of the buffer

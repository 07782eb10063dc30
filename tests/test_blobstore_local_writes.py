"""The local blob store's writes: streamed, durable, exact at any size and any piece size."""

from __future__ import annotations

import fcntl
import os
import uuid
from pathlib import Path

import pytest

from otakit.server.blobstore import LocalBlobStore
from otakit.server.blobstore.local import _LocalIncoming

SIZES = [0, 1, 4095, 4096, 4097, 4 * 1024 * 1024, 4 * 1024 * 1024 + 1, 9 * 1024 * 1024 + 12345]

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("piece", [1000, 65536, 5 * 1024 * 1024])
async def test_an_object_is_exact_whatever_the_size(tmp_path: Path, size: int, piece: int) -> None:
    store = LocalBlobStore(tmp_path)
    data = os.urandom(size)
    object_id = uuid.uuid4().hex
    incoming = await store.begin(object_id)
    for start in range(0, size, piece):
        await incoming.write(data[start : start + piece])
    await incoming.complete()
    assert await (await store.open_range(object_id)).read_all() == data
    assert os.stat(tmp_path / ".objects" / object_id).st_mode & 0o777 == 0o644


async def test_direct_io_is_used_where_the_file_system_allows(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    incoming = await store.begin(uuid.uuid4().hex)
    assert isinstance(incoming, _LocalIncoming)
    try:
        flags = fcntl.fcntl(incoming._fd, fcntl.F_GETFL)
        assert bool(flags & os.O_DIRECT) == incoming._writer.direct
    finally:
        await incoming.abort()

"""The local file store's incoming files: streamed, hashed, durable, exact at any size."""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

import pytest

from otakit.server.filestore.local import LocalFileStore

SIZES = [0, 1, 4095, 4096, 4097, 4 * 1024 * 1024, 4 * 1024 * 1024 + 1, 9 * 1024 * 1024 + 12345]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("piece", [1000, 65536, 5 * 1024 * 1024])
def test_incoming_file_is_exact_whatever_the_size(tmp_path: Path, size: int, piece: int) -> None:
    store = LocalFileStore(tmp_path / "files")
    store.prepare()
    data = os.urandom(size)
    incoming = store.incoming()
    for start in range(0, size, piece):
        incoming.write(data[start : start + piece])
    assert incoming.finish() == hashlib.sha256(data).hexdigest()
    store.adopt(incoming)
    with store.open_object(incoming.upload_id) as stored:
        assert stored.read() == data
    assert os.stat(tmp_path / "files" / ".objects" / incoming.upload_id).st_mode & 0o777 == 0o644


def test_direct_io_is_used_where_the_file_system_allows(tmp_path: Path) -> None:
    store = LocalFileStore(tmp_path)
    store.prepare()
    incoming = store.incoming()
    try:
        flags = fcntl.fcntl(incoming.fd, fcntl.F_GETFL)
        assert bool(flags & os.O_DIRECT) == incoming._writer.direct
    finally:
        incoming.discard()

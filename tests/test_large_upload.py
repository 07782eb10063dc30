"""A large upload streams through with flat server memory and comes back byte-identical."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.samples import content_for
from tests.servers import RunningServer

SIZE = 128 * 1024 * 1024
BLOCK = 1024 * 1024


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _blocks(seed: bytes) -> Iterator[bytes]:
    block = hashlib.sha512(seed).digest() * (BLOCK // 64)
    for i in range(SIZE // BLOCK):
        yield block[i % 64 :] + block[: i % 64]


@pytest.mark.slow
def test_large_upload_streams_with_flat_memory(server: RunningServer, pkg: str) -> None:
    digest = hashlib.sha256()
    for block in _blocks(pkg.encode()):
        digest.update(block)
    content = content_for(b"", pkg, "1.0.0")
    content["sha256"] = digest.hexdigest()
    before = _peak_rss_kib(server.process.pid)

    def body() -> Iterator[bytes]:
        yield b'--B\r\nContent-Disposition: form-data; name="content"\r\n\r\n' + json.dumps(content).encode()
        yield b'\r\n--B\r\nContent-Disposition: form-data; name="file"; filename="p.zip"\r\n\r\n'
        yield from _blocks(pkg.encode())
        yield b"\r\n--B--\r\n"

    with server.client() as client:
        response = client.put(
            "/upload",
            content=body(),
            headers={"Authorization": "Bearer test-token", "Content-Type": "multipart/form-data; boundary=B"},
        )
        assert response.status_code == 200, response.text
        grown_mib = (_peak_rss_kib(server.process.pid) - before) / 1024
        # Holding the file (or a large part of it) in memory would grow the peak by 128 MiB or more.
        assert grown_mib < 48, f"server peak RSS grew by {grown_mib:.0f} MiB during a {SIZE >> 20} MiB upload"

        check = hashlib.sha256()
        with client.stream("GET", f"/otafiles/{pkg}/major/{pkg}-major-1.0.0.zip") as download:
            assert download.status_code == 200
            assert download.headers["content-length"] == str(SIZE)
            for chunk in download.iter_bytes():
                check.update(chunk)
        assert check.hexdigest() == digest.hexdigest()
    on_disk = server.files_dir / pkg / "major" / f"{pkg}-major-1.0.0.zip"
    assert os.path.getsize(on_disk) == SIZE

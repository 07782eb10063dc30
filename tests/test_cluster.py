"""``make cluster`` end to end: deploy/cluster/run.py --check starts two servers on one MariaDB database
and one store (a real SeaweedFS S3 server, streamed or redirected, or one local files folder) behind a
real nginx, uploads through it, checks that every server sees the new version, that the file downloads
the same through nginx and from a server, that a race of two uploads gives one 200 and one 409 and
(S3) that the bucket holds exactly the rows' objects, then stops every process it started."""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.databases import MySQLServer, reachable_mysql
from tests.s3_server import weed_or_skip
from tests.servers import free_port

RUN = Path(__file__).resolve().parent.parent / "deploy" / "cluster" / "run.py"
NGINX = Path("/usr/sbin/nginx")


def free_ports(count: int) -> int:
    """A port with the ``count`` after it free too (run.py puts the servers there)."""
    for _ in range(50):
        port = free_port()
        if port + count < 65536 and all(_free(port + n) for n in range(1, count + 1)):
            return port
    raise AssertionError("no run of free ports found")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


SETUPS = {
    "s3-proxy": ([], "streamed by the servers from SeaweedFS"),
    "s3-redirect": (["--download-mode", "redirect"], "through a 307 to a presigned SeaweedFS link"),
    "local": (["--store", "local"], "(from the folder, sendfile)"),
}


@pytest.mark.mysql
@pytest.mark.parametrize("setup", list(SETUPS))
def test_the_cluster_check_passes_behind_nginx_and_stops_everything(tmp_path: Path, setup: str) -> None:
    options, served = SETUPS[setup]
    if setup != "local":
        weed_or_skip()
    if not NGINX.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{NGINX} is missing (install Debian's nginx-light package)")
        pytest.skip(f"{NGINX} is not installed")
    database = MySQLServer(reachable_mysql(), f"otakit_cluster_test_{secrets.token_hex(6)}")
    server_url = urlsplit(database.admin_url)._replace(path="").geturl()  # the server, no database
    port = free_ports(2)
    args = ["--check", "--servers", "2", "--port", str(port), "--dir", str(tmp_path / "cluster"), *options]
    try:
        done = subprocess.run(
            [sys.executable, str(RUN), *args, "--mysql-url", server_url, "--database", database.database],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    finally:
        database.drop()
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert re.search(
        r"uploaded cluster-app 1\.1\.0 through nginx; every server \(2\) answered it within [01]\.\d\d s",
        output,
    ), output
    assert "byte-identical through nginx" in output, output
    assert served in output, output
    if setup == "local":
        assert "nginx denies the files folder's dot-folders (403)" in output, output
    else:
        assert re.search(r"the bucket holds exactly the 3 rows' objects and no unfinished upload", output), (
            output
        )
    assert "two simultaneous uploads of cluster-app 1.2.0 through nginx: one 200, one 409" in output, output
    assert re.search(rf"uploads answered per server: {port + 1}: \d+, {port + 2}: \d+", output), output
    assert "all checks passed" in output, output
    assert output.rstrip().endswith("stopped"), output
    for listening in (port, port + 1, port + 2):  # nothing the script started is left running
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{listening}/", timeout=2)


def test_a_folder_that_is_not_the_scripts_own_is_left_alone(tmp_path: Path) -> None:
    keep = tmp_path / "mine" / "keep.txt"
    keep.parent.mkdir()
    keep.write_text("not the cluster's\n")
    done = subprocess.run(
        [sys.executable, str(RUN), "--dir", str(keep.parent), "--port", str(free_ports(1)), "--servers", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "is not deploy/cluster/run.py's folder (no .otakit-cluster); choose another --dir" in done.stdout
    assert keep.read_text() == "not the cluster's\n"

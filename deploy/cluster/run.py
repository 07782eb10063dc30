"""``make cluster``: several ``otakit server`` processes on one MariaDB database and one files folder,
behind nginx, on loopback.

The servers share a local files folder (``DIR/otafiles``), which nginx serves itself under
``/otafiles/``; the S3 object store (SeaweedFS) joins the cluster in a later step. The database
(``--database``, on the server of ``--mysql-url``) is dropped and created again at each start, so give
it a name of its own. Everything else lives under ``--dir`` (``var/cluster/`` by default), wiped at
start when it holds this script's marker file. Ctrl-C (or SIGTERM) stops nginx, then the servers.

``--check`` does not wait for Ctrl-C: it uploads through nginx, checks that every server answers the
new version within 2 s (the database's change counter), that the file downloads byte-identical through
nginx (from the folder) and from a server, and that two simultaneous uploads of one version give one
200 and one 409; then it stops everything and exits 0, or 1 naming the check that failed.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import hashlib
import io
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, urlsplit

import httpx
import pymysql

from otakit.errors import ValidationError
from otakit.server.db.urls import mysql_params

MARKER = ".otakit-cluster"  # a folder holding it is this script's own, safe to wipe
STEP_TIMEOUT = 60.0
SPREAD_TIMEOUT = 2.0  # every server answers a new version within this (the change counter: 0.5 s)
PACKAGE = "cluster-app"
BRANCH = "major"
NGINX = "/usr/sbin/nginx"
DATABASE_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")

T = TypeVar("T")


class ClusterError(Exception):
    """A step or check that failed; the message says which and where to look."""


def say(line: str) -> None:
    print(line, flush=True)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is no owner
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join("    " + line for line in text.splitlines()[-lines:])


class Children:
    """The processes the script started, each in a process group of its own (a Ctrl-C at the terminal
    reaches the script only, which then stops nginx first and the servers last)."""

    def __init__(self) -> None:
        self.nginx: Child | None = None
        self.servers: list[Child] = []

    def start(self, name: str, argv: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> Child:
        with open(log, "ab") as out:
            process = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        return Child(name, process, log)

    def all(self) -> list[Child]:
        return [*([self.nginx] if self.nginx else []), *self.servers]

    def check_alive(self) -> None:
        for child in self.all():
            code = child.process.poll()
            if code is not None:
                raise ClusterError(f"{child.name} exited with status {code}; {child.log}:\n{child.tail()}")

    def stop_all(self) -> None:
        if self.nginx is not None:
            _signal(self.nginx, signal.SIGQUIT)  # graceful: finish the requests in flight
            _wait_or_kill(self.nginx, 15)
        for child in self.servers:
            _signal(child, signal.SIGTERM)
        for child in self.servers:
            _wait_or_kill(child, 15)


def _signal(child: Child, signum: int) -> None:
    if child.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.process.pid, signum)


def _wait_or_kill(child: Child, seconds: float) -> None:
    try:
        child.process.wait(seconds)
    except subprocess.TimeoutExpired:
        say(f"  {child.name} did not stop within {seconds:g} s; killing it")
        _signal(child, signal.SIGKILL)
        child.process.wait(10)
    # nginx's workers are in its process group: make sure none outlives the master
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.process.pid, signal.SIGKILL)


def wait_for(
    what: str, probe: Callable[[], T | None], children: Children, timeout: float = STEP_TIMEOUT
) -> T:
    """Call ``probe`` until it returns something other than None or False; ClusterError after
    ``timeout`` seconds, or as soon as a process the script started has died."""
    deadline = time.monotonic() + timeout
    while True:
        children.check_alive()
        try:
            found = probe()
        except httpx.TransportError:
            found = None
        if found is not None and found is not False:
            return found
        if time.monotonic() > deadline:
            raise ClusterError(f"{what}: not within {timeout:g} s")
        time.sleep(0.1)


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child: ours without any OTAKIT_* setting of the user's, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTAKIT_")}
    return {**env, **extra}


def prepare_folder(folder: Path) -> None:
    if folder.exists():
        if any(folder.iterdir()) and not (folder / MARKER).exists():
            raise ClusterError(
                f"{folder} exists and is not a cluster folder (no {MARKER}); choose another --dir"
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / MARKER).write_text("made by deploy/cluster/run.py; wiped at its next start\n")


def otakit_argv() -> list[str]:
    """This interpreter's ``otakit`` (the venv's), or ``python -m otakit`` without one."""
    path = Path(sys.executable).with_name("otakit")
    return [str(path)] if path.exists() else [sys.executable, "-m", "otakit"]


def nginx_config(folder: Path, port: int, server_ports: list[int]) -> str:
    """deploy/cluster/nginx.conf's settings for a run on loopback, everything it writes inside
    ``folder``. ``Host $http_host`` (with the port, unlike the example's ``$host`` on port 80/443): the
    console's CSRF check compares the browser's Origin with it."""
    user = ""
    if os.geteuid() == 0:  # nginx's workers would run as nobody, who may not enter this folder
        me = pwd.getpwuid(os.geteuid())
        user = f"user {me.pw_name} {grp.getgrgid(me.pw_gid).gr_name};\n"
    servers = "".join(f"        server 127.0.0.1:{p} max_fails=3 fail_timeout=10s;\n" for p in server_ports)
    temp = folder / "nginx-temp"
    return f"""# written by deploy/cluster/run.py for this run; see deploy/cluster/nginx.conf
{user}daemon off;
master_process on;
worker_processes 2;
pid {folder}/nginx.pid;
error_log {folder}/nginx-error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    types {{
        application/zip zip;
        application/json json;
    }}
    default_type application/octet-stream;
    log_format upstream '$remote_addr [$time_local] "$request" $status $body_bytes_sent '
                        'upstream=$upstream_addr $request_time s';
    access_log {folder}/nginx-access.log upstream;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;

    upstream otakit {{
        least_conn;
{servers}        keepalive 32;
    }}

    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 10g;
        proxy_request_buffering off;
        proxy_read_timeout 3600s;
        proxy_send_timeout 3600s;

        location /otafiles/ {{
            alias {folder}/otafiles/;
            sendfile on;
            tcp_nopush on;
            location ~ /\\. {{ deny all; }}
        }}
        location / {{
            proxy_pass http://otakit;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"""


def make_package(version: str, remote: str, size: int = 0) -> tuple[bytes, str]:
    """A small zip (``size`` random bytes more, stored, to make an upload take a moment) and its
    content.json, as ``otakit pack`` writes them."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("version.txt", f"{PACKAGE} {version}\n")
        if size:
            archive.writestr("padding.bin", secrets.token_bytes(size), compress_type=zipfile.ZIP_STORED)
    data = buffer.getvalue()
    content = {
        "package": PACKAGE,
        "description": "deploy/cluster/run.py's check package",
        "updateInfo": f"{version}: a cluster check",
        "version": version,
        "branch": BRANCH,
        "local": f"./{PACKAGE}",
        "remote": remote,
        "sha256": hashlib.sha256(data).hexdigest(),
        "BeforeUpdate": "",
        "AfterUpdate": "",
        "dependencies": {},
    }
    return data, json.dumps(content)


class Cluster:
    def __init__(self, folder: Path, port: int, servers: int, mysql_url: str, database: str) -> None:
        self.folder = folder.resolve()
        self.files = self.folder / "otafiles"
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.server_ports = [port + n for n in range(1, servers + 1)]
        self.admin_url = mysql_url
        self.database = database
        self.database_url = urlsplit(mysql_url)._replace(path="/" + quote(database)).geturl()
        self.children = Children()
        self.upload_token = secrets.token_urlsafe(18)
        self.admin_token = secrets.token_urlsafe(18)
        self.enroll_token = secrets.token_urlsafe(18)

    def server_env(self) -> dict[str, str]:
        return child_env(
            OTAKIT_DATABASE_URL=self.database_url,
            OTAKIT_FILES_DIR=str(self.files),
            OTAKIT_UPLOAD_TOKENS=self.upload_token,
            OTAKIT_ADMIN_TOKENS=self.admin_token,
            OTAKIT_ENROLL_TOKENS=self.enroll_token,
            OTAKIT_FORWARDED_ALLOW_IPS="127.0.0.1",
            OTAKIT_LOG_LEVEL="warning",
        )

    # 1
    def create_database(self) -> None:
        try:
            params = mysql_params(self.database_url)
        except ValidationError as error:
            raise ClusterError(f"--mysql-url: {error}") from None
        where = f"{params['host']}:{params['port']}"
        say(f"[1/4] creating the database {self.database} on {where} (dropped first if it exists)")
        extra = {"unix_socket": params["unix_socket"]} if "unix_socket" in params else {}
        try:
            connection = pymysql.connect(
                host=params["host"],
                port=params["port"],
                user=params["user"],
                password=params["password"],
                charset="utf8mb4",
                connect_timeout=5,
                autocommit=True,
                **extra,
            )
            with closing(connection), connection.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS `{self.database}`")
                cursor.execute(f"CREATE DATABASE `{self.database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        except pymysql.err.MySQLError as error:
            raise ClusterError(f"could not create the database on {where} (--mysql-url): {error}") from None
        # Migrate once here, not in N servers racing at their start.
        done = subprocess.run(
            [*otakit_argv(), "db", "upgrade"],
            capture_output=True,
            text=True,
            env=self.server_env(),
            cwd=self.folder,
            timeout=STEP_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            raise ClusterError(f"otakit db upgrade failed: {(done.stderr or done.stdout).strip()}")
        say("      tables created (otakit db upgrade)")

    # 2
    def start_servers(self) -> None:
        say(f"[2/4] starting {len(self.server_ports)} servers on one database and the folder {self.files}")
        self.files.mkdir()
        for n, port in enumerate(self.server_ports, start=1):
            log = self.folder / f"server-{port}.log"
            self.children.servers.append(
                self.children.start(
                    f"server {n} (port {port})",
                    [*otakit_argv(), "server", "--host", "127.0.0.1", "--port", str(port)],
                    env=self.server_env(),
                    cwd=self.folder,
                    log=log,
                )
            )
        for child, port in zip(self.children.servers, self.server_ports, strict=True):

            def answers(port: int = port) -> bool:
                return httpx.get(f"http://127.0.0.1:{port}/test", timeout=1).is_success

            wait_for(f"{child.name} answering /test", answers, self.children)
            say(f"      http://127.0.0.1:{port} up; log: {child.log}")
        say(
            f"      upload token {self.upload_token}, admin token {self.admin_token}, "
            f"enrollment token {self.enroll_token}"
        )

    # 3
    def start_nginx(self) -> None:
        say(f"[3/4] starting nginx on {self.url} in front of them (it serves /otafiles/ from the folder)")
        if not os.access(NGINX, os.X_OK):
            raise ClusterError(f"{NGINX} is missing (Debian's nginx-light package)")
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.folder / "nginx-temp" / sub).mkdir(parents=True, exist_ok=True)
        config = self.folder / "nginx.conf"
        config.write_text(nginx_config(self.folder, self.port, self.server_ports))
        self.children.nginx = self.children.start(
            "nginx",
            [NGINX, "-p", f"{self.folder}/", "-c", str(config)],
            env=child_env(),
            cwd=self.folder,
            log=self.folder / "nginx.log",
        )
        wait_for(
            "nginx answering /test",
            lambda: httpx.get(f"{self.url}/test", timeout=1).is_success,
            self.children,
        )
        say(f"      up; config {config}, logs {self.folder}/nginx-*.log")

    # 4
    def banner(self) -> None:
        servers = [
            f"server {n:<7} http://127.0.0.1:{port}   (its own /metrics: scrape each server)"
            for n, port in enumerate(self.server_ports, start=1)
        ]
        lines = [
            f"through nginx  {self.url}   (console {self.url}/console/)",
            *servers,
            f"upload token   {self.upload_token}",
            f"admin token    {self.admin_token}",
            f"enroll token   {self.enroll_token}",
            "upload         otakit pack DIR --package P --branch B --version V --out dist, then",
            f"               curl -X PUT -H 'Authorization: Bearer {self.upload_token}' \\",
            "                    -F content=@dist/content.json -F file=@dist/P-B-V.zip \\",
            f"                    {self.url}/upload",
            f"files          {self.files} (one local folder; the S3 store comes later)",
            f"database       {self.database_url}",
            f"logs           {self.folder}/server-*.log, {self.folder}/nginx-*.log",
            "",
            "Ctrl-C to stop",
        ]
        width = max(len(line) for line in lines)
        say("[4/4] ready")
        say("+" + "-" * (width + 2) + "+")
        for line in lines:
            say(f"| {line:<{width}} |")
        say("+" + "-" * (width + 2) + "+")

    def wait_forever(self) -> None:
        while True:
            self.children.check_alive()
            time.sleep(1)

    # --check
    def upload(self, client: httpx.Client, data: bytes, content: str, version: str) -> httpx.Response:
        return client.put(
            f"{self.url}/upload",
            headers={"Authorization": f"Bearer {self.upload_token}"},
            data={"content": content},
            files={"file": (f"{PACKAGE}-{BRANCH}-{version}.zip", data, "application/zip")},
            timeout=STEP_TIMEOUT,
        )

    def latest_everywhere(self, client: httpx.Client, version: str) -> float:
        """Seconds until every server, asked on its own port, answers ``version`` as the latest."""
        started = time.monotonic()
        waiting = list(self.server_ports)
        while waiting:
            self.children.check_alive()
            for port in list(waiting):
                response = client.get(
                    f"http://127.0.0.1:{port}/latestVersion", params={"package": PACKAGE, "branch": BRANCH}
                )
                if response.status_code == 200 and response.json()["content.json"]["version"] == version:
                    waiting.remove(port)
            elapsed = time.monotonic() - started
            if waiting and elapsed > SPREAD_TIMEOUT:
                ports = ", ".join(str(p) for p in waiting)
                raise ClusterError(
                    f"the servers on {ports} did not answer {version} within {SPREAD_TIMEOUT:g} s"
                )
            if waiting:
                time.sleep(0.05)
        return time.monotonic() - started

    def check(self) -> None:
        say("[4/4] checking the cluster (--check)")
        with httpx.Client(timeout=10) as client:
            # 1.0.0 first, and every server asked for it: each has it in its cache when 1.1.0 comes.
            for version in ("1.0.0", "1.1.0"):
                data, content = make_package(version, f"{self.url}/")
                response = self.upload(client, data, content, version)
                if response.status_code != 200:
                    raise ClusterError(
                        f"the upload of {version} through nginx: {response.status_code} {response.text}"
                    )
                took = self.latest_everywhere(client, version)
            say(
                f"check: uploaded {PACKAGE} {version} through nginx; every server "
                f"({len(self.server_ports)}) answered it within {took:.2f} s"
            )

            path = f"/otafiles/{PACKAGE}/{BRANCH}/{PACKAGE}-{BRANCH}-{version}.zip"
            through = client.get(f"{self.url}{path}")
            direct = client.get(f"http://127.0.0.1:{self.server_ports[-1]}{path}")
            for where, response in (("through nginx", through), ("from a server", direct)):
                if response.status_code != 200 or response.content != data:
                    raise ClusterError(
                        f"the download {where} is not the uploaded file: {response.status_code}, "
                        f"{len(response.content)} bytes of {len(data)}"
                    )
            sha = hashlib.sha256(data).hexdigest()
            if through.headers.get("etag") == f'"{sha}"':
                raise ClusterError("the download through nginx came from a server, not from the folder")
            if direct.headers.get("etag") != f'"{sha}"':
                raise ClusterError(f"a server's download has the ETag {direct.headers.get('etag')}")
            say(
                f"check: {path} is byte-identical through nginx (from the folder, sendfile) and from "
                f"server {len(self.server_ports)}"
            )
            hidden = client.get(f"{self.url}/otafiles/.objects/")
            if hidden.status_code != 403:
                raise ClusterError(
                    f"/otafiles/.objects/ through nginx answered {hidden.status_code}, not 403"
                )
            say("check: nginx denies the files folder's dot-folders (403)")

        self.race()
        self.metrics()

    def race(self) -> None:
        version = "1.2.0"
        data, content = make_package(version, f"{self.url}/", size=4 * 1024 * 1024)
        barrier = threading.Barrier(2)
        results: list[int | str] = []

        def one() -> None:
            with httpx.Client() as client:
                barrier.wait()
                try:
                    results.append(self.upload(client, data, content, version).status_code)
                except httpx.HTTPError as error:
                    results.append(f"{type(error).__name__}: {error}")

        threads = [threading.Thread(target=one) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(STEP_TIMEOUT + 5)
        if sorted(results, key=str) != [200, 409]:
            raise ClusterError(
                f"two simultaneous uploads of {version} through nginx gave {results}, not 200 and 409"
            )
        say(f"check: two simultaneous uploads of {PACKAGE} {version} through nginx: one 200, one 409")

    def metrics(self) -> None:
        """Each server's own /metrics, and how many uploads it answered (the spread nginx made)."""
        counts = []
        for port in self.server_ports:
            response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
            if response.status_code != 200:
                raise ClusterError(f"/metrics on port {port}: {response.status_code}")
            uploads = sum(
                float(line.rsplit(" ", 1)[1])
                for line in response.text.splitlines()
                if line.startswith("otakit_http_requests_total{") and 'route="/upload"' in line
            )
            counts.append(f"{port}: {uploads:g}")
        say(f"check: every server's /metrics answers; uploads answered per server: {', '.join(counts)}")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.replace("``", "") if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--servers", type=int, default=2, help="how many otakit servers (1 to 16; default 2)")
    parser.add_argument(
        "--port", type=int, default=8100, help="nginx's port on 127.0.0.1; the servers take the next ones"
    )
    parser.add_argument(
        "--mysql-url",
        default="mysql://root@127.0.0.1:3306",
        help="the MySQL/MariaDB server, with a user that may create databases (its path is ignored)",
    )
    parser.add_argument(
        "--database",
        default="otakit_cluster",
        help="the database to (re)create there (default otakit_cluster)",
    )
    parser.add_argument(
        "--dir", type=Path, default=Path("var/cluster"), help="the run's folder, wiped at start"
    )
    parser.add_argument(
        "--check", action="store_true", help="upload and check through nginx, then stop everything"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.servers <= 16:
        parser.error("--servers must be between 1 and 16")
    if not 1 <= args.port <= 65535 - args.servers:
        parser.error("--port and the servers' ports after it must be ports")
    if not DATABASE_NAME.fullmatch(args.database):
        parser.error("--database: letters, digits and _ only")
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    cluster: Cluster | None = None
    code = 0
    try:
        cluster = Cluster(args.dir, args.port, args.servers, args.mysql_url, args.database)
        busy = [str(p) for p in [args.port, *cluster.server_ports] if not port_is_free(p)]
        if busy:
            raise ClusterError(f"port {', '.join(busy)} in use on 127.0.0.1; pass another --port")
        prepare_folder(args.dir)
        cluster.create_database()
        cluster.start_servers()
        cluster.start_nginx()
        if args.check:
            cluster.check()
            say("all checks passed")
        else:
            cluster.banner()
            cluster.wait_forever()
    except KeyboardInterrupt:
        say("")
    except ClusterError as error:
        say(f"cluster: error: {error}")
        code = 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not leave children behind
        if cluster is not None and cluster.children.all():
            say("stopping nginx and the servers")
            cluster.children.stop_all()
            say("stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())

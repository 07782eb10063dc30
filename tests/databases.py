"""Databases for tests: a temp SQLite file, or a fresh MariaDB/MySQL database of our own.

MySQL/MariaDB: ``OTAKIT_TEST_MYSQL_URL`` is an admin URL (default ``mysql://root@127.0.0.1:3306/test``);
each use creates its own database ``otakit_test_<hex>`` there and drops it afterwards, touching no other
database. An unreachable server skips the MySQL tests, unless ``OTAKIT_TEST_REQUIRE_MYSQL=1`` (as in
CI) turns that into a failure.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import pymysql
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))  # what make cluster uses too
from supervise import mysql_connect

__all__ = ["BACKENDS", "MySQLServer", "database_url", "mysql_connect", "mysql_database", "reachable_mysql"]

BACKENDS = ["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)]
DEFAULT_MYSQL_URL = "mysql://root@127.0.0.1:3306/test"


@dataclass(frozen=True)
class MySQLServer:
    admin_url: str
    database: str

    @property
    def url(self) -> str:
        """The URL of this database."""
        return urlsplit(self.admin_url)._replace(path="/" + quote(self.database)).geturl()

    def _run(self, *statements: str) -> None:
        with closing(mysql_connect(self.admin_url, database=False)) as conn, conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)

    def reset(self) -> None:
        """Drop and create it empty. A database name cannot be a parameter; ours is [a-z0-9_]."""
        self._run(
            f"DROP DATABASE IF EXISTS `{self.database}`",
            f"CREATE DATABASE `{self.database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        )

    def drop(self) -> None:
        self._run(f"DROP DATABASE IF EXISTS `{self.database}`")


def reachable_mysql() -> str:
    """The admin URL, after checking the server answers (else skip, or fail when required)."""
    admin_url = os.environ.get("OTAKIT_TEST_MYSQL_URL") or DEFAULT_MYSQL_URL
    try:
        mysql_connect(admin_url, database=False).close()
    except pymysql.err.MySQLError as exc:
        message = f"no MySQL server for the tests at {urlsplit(admin_url).hostname}: {exc}"
        if os.environ.get("OTAKIT_TEST_REQUIRE_MYSQL") == "1":
            pytest.fail(message + " (OTAKIT_TEST_REQUIRE_MYSQL=1: the MySQL tests are mandatory)")
        pytest.skip(message)
    return admin_url


@contextmanager
def mysql_database() -> Iterator[MySQLServer]:
    """A new, empty database of our own, dropped afterwards."""
    server = MySQLServer(reachable_mysql(), f"otakit_test_{secrets.token_hex(6)}")
    server.reset()
    try:
        yield server
    finally:
        server.drop()


@contextmanager
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """An empty database of ``backend`` ("sqlite" or "mysql"), by URL."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'ota.db'}"
    else:
        with mysql_database() as server:
            yield server.url

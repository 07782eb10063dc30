"""Databases for tests: a temp SQLite file, or a fresh MariaDB/MySQL database per use.

MySQL tests read the server from ``OTAKIT_TEST_MYSQL_URL`` (default ``mysql://root@127.0.0.1:3306/test``).
Without a reachable server they skip, unless ``OTAKIT_TEST_REQUIRE_MYSQL=1`` (as in CI): then they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pymysql
import pytest

__all__ = ["BACKENDS", "database_url", "mysql_database"]

BACKENDS = ["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)]
_DEFAULT_MYSQL = "mysql://root@127.0.0.1:3306/test"


def _admin_connect() -> tuple[pymysql.connections.Connection, str]:
    url = os.environ.get("OTAKIT_TEST_MYSQL_URL", _DEFAULT_MYSQL)
    parts = urlsplit(url)
    try:
        conn = pymysql.connect(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            connect_timeout=5,
            autocommit=True,
        )
    except pymysql.err.OperationalError as exc:
        message = f"MySQL/MariaDB not reachable at {parts.hostname}:{parts.port}: {exc}"
        if os.environ.get("OTAKIT_TEST_REQUIRE_MYSQL") == "1":
            pytest.fail(message + " (OTAKIT_TEST_REQUIRE_MYSQL=1: MySQL tests are mandatory)")
        pytest.skip(message)
    return conn, url


@contextmanager
def mysql_database() -> Iterator[str]:
    """A new, empty database (``otakit_test_<hex>``), dropped afterwards; yields its URL."""
    conn, url = _admin_connect()
    name = f"otakit_test_{uuid.uuid4().hex[:12]}"
    parts = urlsplit(url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        yield parts._replace(path=f"/{name}").geturl()
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


@contextmanager
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'ota.db'}"
    else:
        with mysql_database() as url:
            yield url

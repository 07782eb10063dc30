"""Database URLs: which driver takes one, what it connects to, and refusals that never show a password."""

from __future__ import annotations

import pytest

from otakit.errors import ValidationError
from otakit.server.db import open_driver
from otakit.server.db.mysql import MySQLDriver
from otakit.server.db.sqlite import SQLiteDriver
from otakit.server.db.urls import mysql_params, redact, sqlite_path
from otakit.server.repository import open_repository


def test_mysql_url_parsing() -> None:
    assert mysql_params("mysql://us%40er:p%3Ass%2Fw@db.example:3307/ota%5Fprod") == {
        "host": "db.example",
        "port": 3307,
        "user": "us@er",
        "password": "p:ss/w",
        "db": "ota_prod",
        "charset": "utf8mb4",
    }
    defaults = mysql_params("mariadb://otakit@localhost/ota")
    assert (defaults["port"], defaults["password"]) == (3306, "")
    assert mysql_params("mysql+aiomysql://u:p@[::1]/ota")["host"] == "::1"
    assert mysql_params("mysql://u@h/ota?unix_socket=/run/mysqld/mysqld.sock")["unix_socket"] == (
        "/run/mysqld/mysqld.sock"
    )


@pytest.mark.parametrize(
    "url",
    [
        "mysql://u:s3cret@h/",
        "mysql://u:s3cret@h",
        "postgres://u:s3cret@h/ota",
        "mysql://u:s3cret@h/ota?ssl=1",
        "mysql://u:s3cret@h:port/ota",
        "mysql://u:s3cret@[::1/ota",
    ],
)
def test_bad_mysql_urls_are_refused_without_the_password(url: str) -> None:
    with pytest.raises(ValidationError, match=r"MySQL URL") as caught:
        mysql_params(url)
    assert "s3cret" not in str(caught.value)
    with pytest.raises(ValidationError):
        open_repository(url)


def test_sqlite_paths() -> None:
    assert sqlite_path("sqlite:///var/otakit.db") == "var/otakit.db"
    assert sqlite_path("sqlite:////srv/otakit.db") == "/srv/otakit.db"
    for url in ("sqlite://var/otakit.db", "sqlite:///", "sqlite:var/otakit.db"):
        with pytest.raises(ValidationError, match="SQLite URL"):
            open_repository(url)


def test_the_scheme_picks_the_driver() -> None:
    assert isinstance(open_driver("sqlite:///ota.db"), SQLiteDriver)
    for scheme in ("mysql", "MySQL", "mariadb", "mysql+aiomysql"):
        assert isinstance(open_driver(f"{scheme}://u@h/ota"), MySQLDriver)


@pytest.mark.parametrize(
    "url", ["postgres://otakit:s3cret@db/ota", "var/otakit.db", "", "mongodb+srv://u:s3cret/x@h/ota"]
)
def test_an_unsupported_url_is_one_sentence_with_the_accepted_forms(url: str) -> None:
    with pytest.raises(ValidationError) as caught:
        open_repository(url)
    message = str(caught.value)
    assert message.startswith(f"unsupported database URL {redact(url)!r}: use sqlite:///"), message
    assert "mysql://user:pass@host:3306/db" in message
    assert "s3cret" not in message
    assert "\n" not in message


def test_redact_hides_only_the_password() -> None:
    assert redact("mysql://otakit:s3cret@db:3306/ota") == "mysql://otakit:***@db:3306/ota"
    assert redact("mysql://otakit:s3/cr@et@db/ota") == "mysql://otakit:***@db/ota"
    assert redact("mysql://otakit@db/ota") == "mysql://otakit@db/ota"
    assert redact("sqlite:///var/otakit.db") == "sqlite:///var/otakit.db"

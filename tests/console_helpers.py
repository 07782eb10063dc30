"""The web console in tests: a real server with an operator, logged-in HTTP clients and browser pages."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.daemon_packages import Publisher
from tests.servers import FLEET_ENV, RunningServer, run_server

__all__ = [
    "CONSOLE_ENV",
    "OPERATOR",
    "PASSWORD",
    "add_user",
    "client",
    "console_server",
    "csrf_of",
    "logged_in",
    "login_page",
    "publisher",
]

OPERATOR = "operator"
PASSWORD = "correct horse battery"
# A fleet server whose devices heartbeat every second (so "online" follows a test's daemons closely).
CONSOLE_ENV = {**FLEET_ENV, "OTAKIT_HEARTBEAT_SECONDS": "1"}


def add_user(database_url: str, name: str = OPERATOR, password: str = PASSWORD) -> None:
    """``otakit user add NAME --password-stdin``, as an operator would run it."""
    done = subprocess.run(
        [sys.executable, "-m", "otakit", "user", "add", name, "--password-stdin"],
        input=password + "\n",
        capture_output=True,
        text=True,
        env={**os.environ, "OTAKIT_DATABASE_URL": database_url},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@contextmanager
def console_server(
    workdir: Path, database_url: str | None = None, env: dict[str, str] | None = None
) -> Iterator[RunningServer]:
    """A real server (SQLite by default) with one operator, ``OPERATOR`` / ``PASSWORD``."""
    url = database_url or f"sqlite:///{workdir / 'ota.db'}"
    add_user(url)
    with run_server(workdir, url, env={**CONSOLE_ENV, **(env or {})}) as server:
        yield server


def csrf_of(html: str) -> str:
    """The first form's CSRF token on a page."""
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, "no CSRF field on the page"
    return found.group(1)


def logged_in(server: RunningServer, name: str = OPERATOR, password: str = PASSWORD) -> httpx.Client:
    """An HTTP client with a console session (through the login form, as a browser would log in)."""
    client = httpx.Client(base_url=server.url, timeout=30)
    form = client.get("/console/login")
    response = client.post(
        "/console/login", data={"username": name, "password": password, "csrf": csrf_of(form.text)}
    )
    assert response.status_code == 303, response.text
    return client


def login_page(page: Any, server: RunningServer, name: str = OPERATOR, password: str = PASSWORD) -> None:
    """Log a Playwright page in through the form, by its accessible names."""
    page.goto(f"{server.url}/console/login")
    page.get_by_label("Username").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{server.url}/console/")


# Fixtures for a test module that defines its own ``server`` (imported by name, like tests.browser's).


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    """A logged-in console session on the module's server."""
    session = logged_in(server)
    yield session
    session.close()


@pytest.fixture
def publisher(server: RunningServer, tmp_path: Path) -> Iterator[Publisher]:
    """A developer publishing to the module's server."""
    publishing = Publisher(server, tmp_path / "publish")
    yield publishing
    publishing.close()

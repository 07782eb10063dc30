from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from otakit.server.repository import Repository, open_repository
from tests.databases import BACKENDS, MySQLServer, database_url, mysql_database
from tests.s3_server import S3Server, run_weed
from tests.servers import RunningServer, run_server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def pkg() -> str:
    """A package name no other test uses, so tests can share one server."""
    return f"pkg-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A real server on loopback per backend, shared by a module's tests."""
    workdir: Path = tmp_path_factory.mktemp(f"server-{request.param}")
    with database_url(request.param, workdir) as url, run_server(workdir, url) as running:
        yield running


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A real server on loopback with a SQLite database, shared by a module's tests."""
    workdir = tmp_path_factory.mktemp("sqlite-server")
    with run_server(workdir, f"sqlite:///{workdir / 'ota.db'}") as running:
        yield running


@pytest.fixture(scope="session")
def mysql_server() -> Iterator[MySQLServer]:
    with mysql_database() as server:
        yield server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real SeaweedFS S3 server for the whole run (each user takes a prefix of its own)."""
    with run_weed(tmp_path_factory.mktemp("weed")) as server:
        print(f"\nSeaweedFS started in {server.started_in_s:.2f} s at {server.endpoint}")
        yield server


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def repo_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database: no tables, not upgraded."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'ota.db'}"
    server: MySQLServer = request.getfixturevalue("mysql_server")
    server.reset()
    return server.url


@pytest.fixture
async def repo(repo_url: str) -> AsyncIterator[Repository]:
    """A connected repository on an empty, upgraded database of each backend (the contract suites')."""
    async with open_repository(repo_url) as repository:
        await repository.upgrade()
        yield repository

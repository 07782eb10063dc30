"""When the database or the file store cannot be used, the server answers 503 (retry), not 400 or 500."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.databases import mysql_database
from tests.servers import run_server


def test_healthz_is_503_when_the_file_store_is_gone(tmp_path: Path) -> None:
    with run_server(tmp_path, f"sqlite:///{tmp_path / 'ota.db'}") as server, server.client() as client:
        assert client.get("/healthz").status_code == 200
        shutil.rmtree(server.files_dir / ".objects")
        response = client.get("/healthz")
        assert response.status_code == 503
        assert response.json()["status"] == 503
        assert "file store" in response.json()["error"]


@pytest.mark.mysql
def test_database_outage_is_503(tmp_path: Path) -> None:
    with (
        mysql_database() as database,
        run_server(tmp_path, database.url) as server,
        server.client() as client,
    ):
        assert client.get("/healthz").status_code == 200
        database.drop()  # as good as the database going away under a running server
        for path, params in [
            ("/healthz", {}),
            ("/latestVersion", {"package": "p", "branch": "b"}),
            ("/getVersion", {"package": "p"}),
        ]:
            response = client.get(path, params=params)
            assert response.status_code == 503, (path, response.text)
            assert response.json()["status"] == 503

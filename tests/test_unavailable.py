"""When the database or the file store cannot be used, the server answers 503 (retry), not 400 or 500."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.api_client import upload
from tests.databases import mysql_database
from tests.samples import content_for, make_zip
from tests.servers import run_server


def test_healthz_is_503_when_the_file_store_is_gone(tmp_path: Path) -> None:
    with run_server(tmp_path, f"sqlite:///{tmp_path / 'ota.db'}") as server, server.client() as client:
        assert client.get("/healthz").status_code == 200
        shutil.rmtree(server.files_dir)  # as a lost mount: the store's own folder is gone
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


def test_a_file_store_that_cannot_be_written_is_503_and_keeps_nothing(tmp_path: Path) -> None:
    with run_server(tmp_path, f"sqlite:///{tmp_path / 'ota.db'}") as server:
        shutil.rmtree(server.files_dir)  # a lost mount: uploads can no longer be received
        data = make_zip()
        response = upload(server, content_for(data, "p", "1.0"), data)
        assert response.status_code == 503, response.text
        assert response.json()["status"] == 503
        with server.client() as client:
            assert client.get("/latestVersion", params={"package": "p", "branch": "major"}).status_code == 404

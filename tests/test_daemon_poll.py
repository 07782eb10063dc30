"""The daemon's checks ask with If-None-Match, so an unchanged answer is a 304; its API describes itself."""

from __future__ import annotations

from pathlib import Path

from tests.api_client import upload
from tests.daemons import run_daemon, write_config
from tests.samples import content_for, make_zip
from tests.servers import run_server


def test_an_unchanged_server_answers_304_to_the_next_check(tmp_path: Path) -> None:
    with run_server(tmp_path, f"sqlite:///{tmp_path / 'ota.db'}") as server:
        data = make_zip({"v": b"1"})
        assert upload(server, content_for(data, "polled", "1.0", remote=server.url), data).status_code == 200
        with (
            run_daemon(write_config(tmp_path / "device", auto_update=False)) as daemon,
            daemon.client() as api,
        ):
            body = {"package": "polled", "branch": "major", "remote": server.url, "local": "./polled"}
            assert (
                daemon.wait_job(api.post("/packages", json=body).json()["job"]["id"])["state"] == "succeeded"
            )
            first = daemon.wait_job(api.post("/check").json()["job"]["id"])
            assert any("polled 1.0 is up to date" in line for line in first["log"]), first
            second = daemon.wait_job(api.post("/check").json()["job"]["id"])
            assert any("polled 1.0: unchanged on the server" in line for line in second["log"]), second
            data = make_zip({"v": b"2"})
            assert (
                upload(server, content_for(data, "polled", "1.1", remote=server.url), data).status_code == 200
            )
            third = daemon.wait_job(api.post("/check").json()["job"]["id"])
            assert any("1.1 is available (auto_update is off)" in line for line in third["log"]), third
            assert daemon.installed("polled")["version"] == "1.0"  # type: ignore[index]
            # The API's own description is open; everything else needs the token.
            assert api.get("/openapi.json", headers={"Authorization": ""}).status_code == 200
            assert "/packages/{name}/update" in api.get("/openapi.json").json()["paths"]

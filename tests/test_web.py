"""The JSON answer convention shared by the server and the daemon's local API (``otakit.web``)."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from otakit.web import install_error_handlers

pytestmark = pytest.mark.anyio


class _Install(BaseModel):
    package: str
    branch: str


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/packages")
    async def install(body: _Install) -> dict[str, object]:
        return {"status": 200, "package": body.package}

    return app


async def _post(body: bytes) -> httpx.Response:
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post("/packages", content=body, headers={"Content-Type": "application/json"})


async def test_a_broken_json_body_is_named_with_where_it_broke() -> None:
    response = await _post(b'{"package": "a" "branch": "b"}')
    assert response.status_code == 400
    assert response.json() == {
        "status": 400,
        "error": "the request body is not valid JSON: Expecting ',' delimiter at character 16",
    }


async def test_a_missing_field_is_named() -> None:
    response = await _post(b'{"package": "a"}')
    assert response.status_code == 400
    assert response.json() == {"status": 400, "error": "branch is required"}

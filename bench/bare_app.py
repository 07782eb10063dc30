"""The baseline app for bench/latest_version.py: a bare FastAPI route returning constant JSON.

Run with the same flags as the otakit server:
``python -m uvicorn bare_app:create_app --factory --http httptools`` (with bench/ on PYTHONPATH).
"""

from __future__ import annotations

from fastapi import FastAPI


def create_app() -> FastAPI:
    app = FastAPI()

    @app.get("/const")
    async def const() -> dict[str, int]:
        return {"status": 200}

    return app

"""The web console: server-rendered pages under ``/console/`` on the fleet's repository and rules.

Each resource is a module with its router (``overview``, ``packages``, ``devices``, ``rollouts``,
``users``); ``auth`` holds sessions, CSRF and the login throttle, ``render`` the templates.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.responses import RedirectResponse, Response

from otakit.server.console import devices, login, overview, packages, rollouts, users

__all__ = ["MODULES", "add_console"]

MODULES = (login, overview, packages, devices, rollouts, users)


def add_console(app: FastAPI) -> None:
    app.mount(
        "/console/static", StaticFiles(directory=Path(__file__).parent / "static"), name="console-static"
    )

    async def to_console() -> Response:
        return RedirectResponse("/console/", status_code=307)

    app.add_api_route("/console", to_console, include_in_schema=False)
    for module in MODULES:
        app.include_router(module.router)

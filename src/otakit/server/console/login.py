"""Logging in and out of the console."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from starlette.responses import Response

from otakit.errors import ForbiddenError, ThrottledError
from otakit.server.console.auth import (
    NotLoggedIn,
    OperatorDep,
    check_csrf,
    check_origin,
    end_session,
    log_in,
    login_form_token,
    login_token_valid,
    operator,
    set_login_cookie,
)
from otakit.server.console.render import ConsoleRoute, back_to, redirect, render

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)

_Field = Annotated[str, Form(max_length=1024)]


def _next(target: str | None) -> str:
    """Where to go after logging in: a console page of this server, never another site."""
    if target and target.startswith("/console/") and "\\" not in target and "//" not in target:
        return target
    return "/console/"


def _form(request: Request, *, status: int = 200, error: str = "", name: str = "", target: str) -> Response:
    token, cookie = login_form_token(request)
    page = render(
        request, "login.html", None, status=status, error=error, name=name, next=target, login_csrf=token
    )
    set_login_cookie(request, page, cookie)
    return page


@router.get("/login")
async def login_form(request: Request, next: str | None = None) -> Response:
    try:
        await operator(request)
    except NotLoggedIn:
        return _form(request, target=_next(next))
    return redirect(_next(next))  # logged in already


@router.post("/login")
async def login(
    request: Request,
    username: _Field,
    password: _Field,
    csrf: _Field = "",
    next: _Field = "/console/",
) -> Response:
    check_origin(request)
    if not login_token_valid(request, csrf):
        raise ForbiddenError("the login form's CSRF token is missing or expired: reload the page")
    target = _next(next)
    response = redirect(target)
    try:
        if await log_in(request, response, username, password):
            return response
    except ThrottledError as exc:
        return _form(request, status=429, error=str(exc), name=username, target=target)
    return _form(request, status=401, error="Wrong username or password.", name=username, target=target)


@router.post("/logout")
async def logout(request: Request, who: OperatorDep, csrf: _Field = "") -> Response:
    check_csrf(request, who, csrf)
    response = back_to(request, "/console/login", "You are logged out.")
    await end_session(request, response, who)
    return response

"""Rendering console pages: Jinja2 templates (autoescaped), flash messages, security headers, and the
route class that turns errors into pages instead of JSON.

Every page carries a Content-Security-Policy that allows scripts, styles and images from this server
only: escaping is the first defence against device-supplied text, the policy the second.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from itsdangerous import BadSignature
from starlette.responses import RedirectResponse, Response

from otakit.errors import OtakitError
from otakit.server.console.auth import (
    LOGIN_COOKIE,
    NotLoggedIn,
    Operator,
    check_csrf,
    clear_cookie,
    set_cookie,
    signer,
)
from otakit.server.deps import app_state
from otakit.web import iso_utc

__all__ = [
    "MAX_FORM_BYTES",
    "STREAMED",
    "ConsoleRoute",
    "back_to",
    "flash",
    "redirect",
    "render",
    "secure",
    "templates",
]

log = logging.getLogger("otakit.server.console")

_HERE = Path(__file__).parent
templates = Jinja2Templates(directory=_HERE / "templates")
templates.env.filters["iso"] = iso_utc
templates.env.filters["url"] = lambda value: quote(str(value), safe="")
templates.env.globals["static"] = lambda name: f"/console/static/{quote(name)}"

FLASH_COOKIE = "otakit_flash"
_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
    " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def secure(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = _POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cache-Control"] = "no-store"
    return response


def _take_flash(request: Request) -> dict[str, str] | None:
    cookie = request.cookies.get(FLASH_COOKIE)
    if not cookie:
        return None
    try:
        data = json.loads(signer(app_state(request), "flash").unsign(cookie, max_age=120))
    except (BadSignature, ValueError):
        return None
    if isinstance(data, dict) and isinstance(data.get("text"), str):
        return {"kind": str(data.get("kind", "ok")), "text": data["text"]}
    return None


def render(
    request: Request,
    template: str,
    who: Operator | None,
    *,
    status: int = 200,
    section: str = "",
    **context: Any,
) -> Response:
    """The page ``template`` for operator ``who`` (None on the login page), with the flash message."""
    message = _take_flash(request)
    response = templates.TemplateResponse(
        request,
        template,
        {"who": who, "csrf": who.csrf if who else "", "section": section, "message": message, **context},
        status_code=status,
    )
    if message is not None:
        clear_cookie(response, FLASH_COOKIE)
    return secure(response)


def redirect(url: str) -> Response:
    """303 See Other: after a form, the browser GETs the page (a reload does not post again)."""
    return secure(RedirectResponse(url, status_code=303))


def flash(request: Request, response: Response, text: str, kind: str = "ok") -> Response:
    """Show ``text`` on the next page the browser loads."""
    value = signer(app_state(request), "flash").sign(json.dumps({"kind": kind, "text": text[:500]}))
    set_cookie(request, response, FLASH_COOKIE, value.decode(), 120)
    return response


def back_to(request: Request, url: str, text: str, kind: str = "ok") -> Response:
    """Redirect to ``url`` with a flash message: how every console form answers."""
    return flash(request, redirect(url), text, kind)


@dataclass(frozen=True, slots=True)
class Done:
    """What a form's operation did: the sentence to show, and the page to show it on (the form's own
    when None)."""

    text: str
    url: str | None = None


async def form_action(
    request: Request, who: Operator, csrf: str, back: str, operation: Callable[[], Awaitable[Done]]
) -> Response:
    """How every console form that changes something answers: the CSRF check first (403, nothing is
    done), then the operation; a redirect with what it did, or back to ``back`` with its refusal (an
    ``OtakitError``'s sentence)."""
    check_csrf(request, who, csrf)
    try:
        done = await operation()
    except OtakitError as exc:
        return back_to(request, back, str(exc), "error")
    return back_to(request, done.url or back, done.text)


def _login_url(request: Request) -> str:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/console/login?next=" + quote(target, safe="")


def _small_body(request: Request) -> bool:
    """A declared length within the limit (browsers always declare a form's length)."""
    declared = request.headers.get("content-length")
    return declared is not None and declared.isdigit() and int(declared) <= MAX_FORM_BYTES


def _refused(request: Request, status: int, message: str) -> Response:
    """An error as the console shows it: a page with the error's status and its sentence."""
    return render(request, "error.html", None, status=status, code=status, message_text=message)


MAX_FORM_BYTES = 64 * 1024
STREAMED = {"x-otakit-streamed": True}  # ``openapi_extra`` of a route that reads its own (large) body


class ConsoleRoute(APIRoute):
    """A console route: no session → the login page (401 for a script's request); an otakit error or bad
    input → an HTML page with its status, never JSON. A form's body is at most ``MAX_FORM_BYTES`` (413
    before it is read), unless the route streams its body itself (``openapi_extra=STREAMED``)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        streamed = bool((self.openapi_extra or {}).get("x-otakit-streamed"))

        async def route(request: Request) -> Response:
            if request.method != "GET" and not streamed and not _small_body(request):
                return _refused(request, 413, f"a form is at most {MAX_FORM_BYTES // 1024} KiB")
            try:
                return await handler(request)
            except NotLoggedIn:
                if request.method == "GET" and "hx-request" not in request.headers:
                    return redirect(_login_url(request))
                response = render(
                    request,
                    "error.html",
                    None,
                    status=401,
                    code=401,
                    message_text="Log in again: the session ended.",
                )
                response.headers["HX-Redirect"] = _login_url(request)
                clear_cookie(response, LOGIN_COOKIE)
                return response
            except OtakitError as exc:
                return _refused(request, exc.status_code, str(exc))
            except RequestValidationError as exc:
                errors = exc.errors()
                where = str(errors[0].get("loc", ("",))[-1]) if errors else ""
                what = errors[0].get("msg", "invalid") if errors else "invalid request"
                return _refused(request, 400, f"{where}: {what}" if where else what)

        return route

"""Console sessions, CSRF tokens and the login throttle (DESIGN.md, "Web console").

A session is a random id, kept by the browser in a signed, expiring cookie (``HttpOnly``,
``SameSite=Strict``, ``Secure`` behind HTTPS) and by the database as its sha256, so logging out ends it
in every server process. Each session has its own CSRF token, an HMAC of its id: every form that changes
something sends it, and a request without it changes nothing (403). The login form, which has no session
yet, gets its token from a short-lived signed cookie of its own (so a foreign page cannot log a browser
into another account). From one address, at most 10 failed logins a minute, then 429 until the minute is
over — counted in the database, so several processes share one limit.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

import anyio.to_thread
from fastapi import Depends, Request
from itsdangerous import BadSignature, TimestampSigner
from starlette.responses import Response

from otakit.errors import ForbiddenError, ThrottledError
from otakit.passwords import hash_password, verify_password
from otakit.server.deps import State, app_state

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "LOGIN_COOKIE",
    "MAX_FAILURES",
    "SESSION_COOKIE",
    "NotLoggedIn",
    "Operator",
    "OperatorDep",
    "check_csrf",
    "check_origin",
    "clear_cookie",
    "client_address",
    "end_session",
    "log_in",
    "login_form_token",
    "login_token_valid",
    "operator",
    "set_cookie",
    "set_login_cookie",
    "signer",
]

SESSION_COOKIE = "otakit_session"
LOGIN_COOKIE = "otakit_login"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
MAX_FAILURES = 10
FAILURE_WINDOW = 60.0
_LOGIN_FORM_SECONDS = 3600


class NotLoggedIn(Exception):
    """The request has no live session: the console sends the browser to the login page."""


@dataclass(frozen=True, slots=True)
class Operator:
    name: str
    session_hash: str
    csrf: str


def signer(state: State, purpose: str) -> TimestampSigner:
    return TimestampSigner(state.console_secret, salt=f"otakit.console.{purpose}")


def _digest(state: State, purpose: str, value: str) -> str:
    key = state.console_secret.encode()
    return hmac.new(key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path="/console", httponly=True, samesite="strict")


def client_address(request: Request) -> str:
    """The caller's address (behind a proxy, as uvicorn's ``--forwarded-allow-ips`` reports it)."""
    return request.client.host if request.client else "unknown"


async def operator(request: Request) -> Operator:
    """The logged-in operator; ``NotLoggedIn`` without a live session."""
    state = app_state(request)
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise NotLoggedIn
    try:
        session_id = signer(state, "session").unsign(cookie, max_age=state.settings.console_session_seconds)
    except BadSignature:  # forged, from another server's key, or expired
        raise NotLoggedIn from None
    sid = session_id.decode()
    name = await state.repo.users.session_user(_hash(sid), now=time.time())
    if name is None:  # logged out, its operator deleted or its password changed
        raise NotLoggedIn
    return Operator(name, _hash(sid), _digest(state, "csrf", sid))


OperatorDep = Annotated[Operator, Depends(operator)]


def check_origin(request: Request) -> None:
    """Refuse a browser's cross-site request: its ``Origin`` names another host (403)."""
    origin = request.headers.get("origin")
    if origin is None:
        return
    if origin == "null" or urlsplit(origin).netloc != request.headers.get("host"):
        raise ForbiddenError("this request came from another site")


def check_csrf(request: Request, who: Operator, token: str | None) -> None:
    """403 unless ``token`` (a form field, or the ``X-CSRF-Token`` header) is the session's own."""
    check_origin(request)
    supplied = token or request.headers.get(CSRF_HEADER) or ""
    if not hmac.compare_digest(supplied.encode(), who.csrf.encode()):
        raise ForbiddenError("the form's CSRF token is missing or not this session's: reload the page")


# -- logging in and out ------------------------------------------------------------------------------


def login_form_token(request: Request) -> tuple[str, str]:
    """A fresh login form's CSRF token and the signed cookie it is tied to (``set_login_cookie``)."""
    state = app_state(request)
    nonce = secrets.token_urlsafe(16)
    return _digest(state, "login", nonce), signer(state, "login").sign(nonce).decode()


def set_login_cookie(request: Request, response: Response, cookie: str) -> None:
    set_cookie(request, response, LOGIN_COOKIE, cookie, _LOGIN_FORM_SECONDS)


def login_token_valid(request: Request, token: str) -> bool:
    state = app_state(request)
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    try:
        nonce = signer(state, "login").unsign(cookie, max_age=_LOGIN_FORM_SECONDS).decode()
    except BadSignature:
        return False
    return hmac.compare_digest(token.encode(), _digest(state, "login", nonce).encode())


async def log_in(request: Request, response: Response, name: str, password: str) -> bool:
    """Check the password and start a session on ``response``; False for a wrong name or password.

    ``ThrottledError`` (429) while the caller's address has failed ``MAX_FAILURES`` times this minute;
    the password is then not even checked.
    """
    state = app_state(request)
    users = state.repo.users
    address = client_address(request)
    now = time.time()
    if await users.failures(address, now=now, window=FAILURE_WINDOW) >= MAX_FAILURES:
        raise ThrottledError("too many failed logins from this address: wait a minute")
    user = await users.get(name)
    # An unknown name costs the same hash as a known one: the time does not tell which names exist.
    stored = user.password_hash if user is not None else _dummy_hash()
    matches = await anyio.to_thread.run_sync(verify_password, password, stored)
    if user is None or not matches:
        await users.add_failure(address, now=now, window=FAILURE_WINDOW)
        return False
    session_id = secrets.token_urlsafe(32)
    lifetime = state.settings.console_session_seconds
    await users.start_session(_hash(session_id), user.name, now=now, expires=now + lifetime)
    set_cookie(
        request, response, SESSION_COOKIE, signer(state, "session").sign(session_id).decode(), lifetime
    )
    clear_cookie(response, LOGIN_COOKIE)
    return True


async def end_session(request: Request, response: Response, who: Operator) -> None:
    await app_state(request).repo.users.end_session(who.session_hash)
    clear_cookie(response, SESSION_COOKIE)


@functools.cache
def _dummy_hash() -> str:
    """A valid hash of a password nobody knows, made once (about 50 ms)."""
    return hash_password(secrets.token_urlsafe(16))

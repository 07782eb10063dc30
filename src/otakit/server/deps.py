"""Request dependencies, as ``Annotated`` aliases for route signatures."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from otakit.errors import AuthError
from otakit.server.blobstore import BlobStore
from otakit.server.deltas import DeltaMaker
from otakit.server.inflight import InFlight
from otakit.server.latest_cache import LatestCache, StampCache
from otakit.server.repository import Repository
from otakit.server.seen import SeenBuffer
from otakit.server.settings import ServerSettings

__all__ = [
    "Admin",
    "AdminDep",
    "InFlightDep",
    "Publisher",
    "PublisherDep",
    "RepoDep",
    "SettingsDep",
    "State",
    "StoreDep",
    "app_state",
    "bearer_token",
    "ended_caches",
    "require_admin",
    "require_publisher",
    "token_valid",
]


@dataclass
class State:
    settings: ServerSettings
    repo: Repository
    store: BlobStore
    inflight: InFlight
    latest: LatestCache
    seen: SeenBuffer
    # The fleet's hot paths (device tokens, released rows, active rollouts, device views), under the
    # same stamp as ``latest``: every change that matters to them replaces it.
    cache: StampCache[object]
    deltas: DeltaMaker
    # The web console's signing key (sessions, CSRF): a setting, or generated once into the database.
    console_secret: str = ""


def app_state(request: Request) -> State:
    """The running app's state (settings, repository, file store, caches)."""
    state: State = request.app.state.otakit
    return state


# Dependencies are ``async def`` although they do no I/O: FastAPI runs a plain ``def`` dependency in a
# worker thread, a hop that cost more than the rest of a /latestVersion answer.
async def ended_caches(state: State) -> None:
    """Before a change's 200: no process answers from a cache (``/latestVersion``, the fleet's hot
    paths) made before it."""
    await state.repo.changes.bump()


async def _repo(request: Request) -> Repository:
    return app_state(request).repo


async def _store(request: Request) -> BlobStore:
    return app_state(request).store


async def _inflight(request: Request) -> InFlight:
    return app_state(request).inflight


async def _settings(request: Request) -> ServerSettings:
    return app_state(request).settings


@dataclass(frozen=True)
class Publisher:
    anonymous: bool


def bearer_token(request: Request) -> str:
    """The request's bearer token, or "" without one."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" else ""


def token_valid(token: str, candidates: list[str]) -> bool:
    """Whether ``token`` is one of ``candidates``, comparing each in constant time."""
    supplied = token.encode()
    valid = False
    for candidate in candidates:
        valid |= hmac.compare_digest(candidate.encode(), supplied)
    return valid


async def require_publisher(request: Request) -> Publisher:
    """The caller's publisher token, checked in constant time; 401 without a valid one."""
    settings = app_state(request).settings
    token = bearer_token(request)
    if token:
        if token_valid(token, settings.upload_tokens):
            return Publisher(anonymous=False)
        if not settings.allow_anonymous_upload:
            raise AuthError("the publisher token is not valid")
    if settings.allow_anonymous_upload:
        return Publisher(anonymous=True)
    if not settings.upload_tokens:
        raise AuthError(
            "uploads are disabled: set OTAKIT_UPLOAD_TOKENS on the server"
            " (or OTAKIT_ALLOW_ANONYMOUS_UPLOAD=true)"
        )
    raise AuthError("a publisher token is required: send 'Authorization: Bearer <token>'")


@dataclass(frozen=True)
class Admin:
    """An operator, by admin token (``OTAKIT_ADMIN_TOKENS``). A publisher token is not one."""


async def require_admin(request: Request) -> Admin:
    """The caller's admin token, checked in constant time; 401 without a valid one."""
    settings = app_state(request).settings
    token = bearer_token(request)
    if not settings.admin_tokens:
        raise AuthError("the admin API is disabled: set OTAKIT_ADMIN_TOKENS on the server")
    if not token:
        raise AuthError("an admin token is required: send 'Authorization: Bearer <token>'")
    if not token_valid(token, settings.admin_tokens):
        raise AuthError("the admin token is not valid")
    return Admin()


RepoDep = Annotated[Repository, Depends(_repo)]
StoreDep = Annotated[BlobStore, Depends(_store)]
InFlightDep = Annotated[InFlight, Depends(_inflight)]
SettingsDep = Annotated[ServerSettings, Depends(_settings)]
PublisherDep = Annotated[Publisher, Depends(require_publisher)]
AdminDep = Annotated[Admin, Depends(require_admin)]

"""Request dependencies, as ``Annotated`` aliases for route signatures."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from otakit.errors import AuthError
from otakit.server.filestore import FileStore
from otakit.server.latest_cache import LatestCache
from otakit.server.repository import Repository
from otakit.server.settings import ServerSettings

__all__ = ["Publisher", "PublisherDep", "RepoDep", "SettingsDep", "State", "StoreDep", "require_publisher"]


@dataclass
class State:
    settings: ServerSettings
    repo: Repository
    store: FileStore
    latest: LatestCache


def _state(request: Request) -> State:
    state: State = request.app.state.otakit
    return state


# Dependencies are ``async def`` although they do no I/O: FastAPI runs a plain ``def`` dependency in a
# worker thread, a hop that cost more than the rest of a /latestVersion answer.
async def _repo(request: Request) -> Repository:
    return _state(request).repo


async def _store(request: Request) -> FileStore:
    return _state(request).store


async def _settings(request: Request) -> ServerSettings:
    return _state(request).settings


@dataclass(frozen=True)
class Publisher:
    anonymous: bool


async def require_publisher(request: Request) -> Publisher:
    """The caller's publisher token, checked in constant time; 401 without a valid one."""
    settings = _state(request).settings
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token:
        supplied = token.encode()
        valid = False
        for candidate in settings.upload_tokens:
            valid |= hmac.compare_digest(candidate.encode(), supplied)
        if valid:
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


RepoDep = Annotated[Repository, Depends(_repo)]
StoreDep = Annotated[FileStore, Depends(_store)]
SettingsDep = Annotated[ServerSettings, Depends(_settings)]
PublisherDep = Annotated[Publisher, Depends(require_publisher)]

"""HTTP answers shared by the server and the daemon's local API: a JSON body whose ``status`` equals
the HTTP status, errors as ``{"status": code, "error": sentence}``, and 400 (never 422) for bad input."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from otakit.errors import OtakitError

__all__ = [
    "answer",
    "body_etag",
    "declared",
    "etag_matches",
    "install_error_handlers",
    "iso_utc",
    "json_answer",
]


def json_answer(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def answer(status: int = 200, headers: dict[str, str] | None = None, **fields: Any) -> Response:
    body = json.dumps({"status": status, **fields}, ensure_ascii=False, separators=(",", ":"))
    return json_answer(body.encode("utf-8"), status, headers)


def body_etag(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def iso_utc(at: float) -> str:
    """Unix seconds as the fleet API writes times: ISO-8601 UTC to the millisecond, ``…Z``."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def declared(model: type[BaseModel], status: int = 200) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses=``: its answer ``model`` under ``status``, so that ``/docs`` shows what the
    route sends (routes build their answers themselves, for speed and for exact JSON)."""
    return {status: {"model": model, "description": "success"}}


def etag_matches(request: Request, etag: str) -> bool:
    """RFC 9110 If-None-Match: a list of (possibly weak) tags, or ``*``."""
    header = request.headers.get("if-none-match")
    if not header:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in tags or etag in tags


def _first_error(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    loc = first.get("loc") or ("",)
    if first.get("type") == "json_invalid":  # loc is ("body", the character where decoding stopped)
        reason = (first.get("ctx") or {}).get("error") or "it does not decode"
        at = f" at character {loc[-1]}" if isinstance(loc[-1], int) else ""
        return f"the request body is not valid JSON: {reason}{at}"
    where = str(loc[-1])
    if first.get("type") == "missing":
        return f"{where} is required"
    return f"{where}: {first.get('msg', 'invalid')}"


def install_error_handlers(app: FastAPI) -> None:
    async def otakit_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, OtakitError)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return answer(exc.status_code, headers, error=str(exc))

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return answer(400, error=_first_error(exc))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        if status == 422:
            status = 400
        return answer(status, dict(exc.headers or {}), error=str(exc.detail))

    app.add_exception_handler(OtakitError, otakit_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)

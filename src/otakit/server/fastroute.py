"""Routes for the hot paths: in the OpenAPI page like any other, but their requests skip FastAPI's
parameter and answer machinery (which cost most of the time of a small answer)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

__all__ = ["add_request_route"]

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


class _RequestRoute(APIRoute):
    """A route whose endpoint takes the ``Request`` and returns its ``Response``, nothing else."""

    def get_route_handler(self) -> Endpoint:
        endpoint: Endpoint = self.endpoint
        return endpoint


def add_request_route(app: FastAPI, path: str, endpoint: Endpoint, **documented: Any) -> None:
    """Register ``endpoint`` for ``path`` on ``app`` itself rather than on a router: FastAPI matches an
    included router's routes twice a request, which cost a hot route some 15 % of its requests/s.
    ``documented`` are ``add_api_route``'s arguments (methods, summary, ``openapi_extra`` for the
    parameters the endpoint reads itself, responses)."""
    app.router.add_api_route(path, endpoint, route_class_override=_RequestRoute, **documented)

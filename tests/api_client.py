"""Uploading to a test server the way a publisher would, and checking the answers' error convention."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.servers import RunningServer

__all__ = ["assert_error", "upload"]


def upload(
    server: RunningServer,
    content: dict[str, Any] | str | bytes | None,
    data: bytes | None,
    *,
    token: str | None = "test-token",
    params: dict[str, str] | None = None,
    file_first: bool = False,
    content_as_file: bool = False,
) -> httpx.Response:
    """PUT /upload with the parts ``content`` and ``file`` (either may be left out with None)."""
    parts: list[tuple[str, Any]] = []
    if content is not None:
        text = json.dumps(content, ensure_ascii=False) if isinstance(content, dict) else content
        parts.append(("content", ("content.json" if content_as_file else None, text, "application/json")))
    if data is not None:
        parts.append(("file", ("package.zip", data, "application/zip")))
    if file_first:
        parts.reverse()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with server.client() as client:
        return client.put("/upload", files=parts, headers=headers, params=params)


def assert_error(response: httpx.Response, status: int) -> str:
    """The error sentence of an answer that must be ``status`` under the JSON convention."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status
    assert isinstance(body["error"], str)
    assert body["error"]
    error: str = body["error"]
    return error

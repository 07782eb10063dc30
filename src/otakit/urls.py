"""Server URLs as the daemon's config and content.json give them."""

from __future__ import annotations

import httpx

from otakit.errors import ValidationError

__all__ = ["http_base"]


def http_base(value: str, what: str) -> str:
    """``value`` without trailing slashes, if it is an http:// or https:// URL with a host; else
    ValidationError naming ``what`` (``remote``, ``registry``)."""
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise ValidationError(f"invalid {what} {value!r}: expected an http:// or https:// URL")
    return value.rstrip("/")

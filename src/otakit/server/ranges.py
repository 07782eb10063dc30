"""HTTP Range requests on one object (RFC 9110, section 14): pure, no I/O."""

from __future__ import annotations

import re

from otakit.server.blobstore.base import BlobRange

__all__ = ["Unsatisfiable", "content_range", "parse_range"]

_SPEC = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.IGNORECASE)


class Unsatisfiable(ValueError):
    """A valid range that starts past the end of the object: answer 416 with ``bytes */total``."""

    def __init__(self, total: int) -> None:
        super().__init__(f"the range starts past the object's {total} bytes")
        self.total = total


def parse_range(header: str | None, total: int) -> BlobRange | None:
    """The one range ``header`` asks of an object of ``total`` bytes, or ``None`` to send it whole.

    ``None`` too for what a server may ignore: no header, another unit, several ranges (a device resumes
    with one), or a header that does not parse. ``Unsatisfiable`` when the range starts at or past the
    end (or asks the last 0 bytes).
    """
    if header is None:
        return None
    match = _SPEC.fullmatch(header)
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if not first:  # a suffix: the last N bytes
        suffix = int(last)
        if suffix == 0 or total == 0:
            raise Unsatisfiable(total)
        return BlobRange(max(total - suffix, 0), total - 1, total)
    start = int(first)
    end = int(last) if last else total - 1
    if last and end < start:
        return None  # invalid: ignored, as the RFC allows
    if start >= total:
        raise Unsatisfiable(total)
    return BlobRange(start, min(end, total - 1), total)


def content_range(span: BlobRange) -> str:
    """The ``Content-Range`` of a 206 answer carrying ``span``."""
    return f"bytes {span.start}-{span.end}/{span.total}"

"""HTTP Range parsing for package downloads (pure)."""

from __future__ import annotations

import pytest

from otakit.server.blobstore import BlobRange
from otakit.server.ranges import Unsatisfiable, content_range, parse_range


@pytest.mark.parametrize(
    ("header", "total", "expected"),
    [
        (None, 100, None),
        ("bytes=0-9", 100, BlobRange(0, 9, 100)),
        ("bytes=10-", 100, BlobRange(10, 99, 100)),
        ("bytes=90-500", 100, BlobRange(90, 99, 100)),  # an end past the last byte is cut to it
        ("bytes=-5", 100, BlobRange(95, 99, 100)),
        ("bytes=-500", 100, BlobRange(0, 99, 100)),  # a suffix longer than the object: all of it
        ("BYTES = 3 - 4", 100, BlobRange(3, 4, 100)),
        ("bytes=0-0", 1, BlobRange(0, 0, 1)),
        # What a server may ignore (RFC 9110): the whole object is sent.
        ("bytes=5-2", 100, None),
        ("bytes=0-1,5-6", 100, None),
        ("items=0-1", 100, None),
        ("bytes=-", 100, None),
        ("bytes=abc", 100, None),
        ("", 100, None),
    ],
)
def test_ranges(header: str | None, total: int, expected: BlobRange | None) -> None:
    assert parse_range(header, total) == expected


@pytest.mark.parametrize(
    ("header", "total"),
    [("bytes=100-", 100), ("bytes=100-200", 100), ("bytes=-0", 100), ("bytes=0-", 0), ("bytes=-3", 0)],
)
def test_a_range_past_the_end_is_unsatisfiable(header: str, total: int) -> None:
    with pytest.raises(Unsatisfiable) as caught:
        parse_range(header, total)
    assert caught.value.total == total


def test_content_range() -> None:
    assert content_range(BlobRange(10, 29, 100)) == "bytes 10-29/100"

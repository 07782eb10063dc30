"""The browser harness (tests/browser.py): Debian's Chromium, driven by Playwright, sees a real server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import pytest

from tests.browser import browser, page, phone_page, screenshot
from tests.servers import RunningServer

if TYPE_CHECKING:
    from playwright.sync_api import Page, Request

__all__ = ["browser", "page", "phone_page"]  # fixtures, used by name


def test_the_browser_shows_the_servers_answer(sqlite_server: RunningServer, page: Page) -> None:
    expected = httpx.get(f"{sqlite_server.url}/test").json()
    response = page.goto(f"{sqlite_server.url}/test")
    assert response is not None
    assert response.status == 200
    assert json.loads(page.locator("pre").first.inner_text()) == expected


def test_a_page_asks_only_loopback(sqlite_server: RunningServer, page: Page) -> None:
    urls: list[str] = []

    def record(request: Request) -> None:
        urls.append(request.url)

    page.on("request", record)
    page.goto(f"{sqlite_server.url}/test")
    # A page of our own on the server's origin, whose script asks the server again.
    page.set_content(
        "<!doctype html><title>loopback</title><p id=out>waiting</p>"
        "<script>fetch('/test').then(r => r.json()).then(j => {"
        " document.getElementById('out').textContent = 'status ' + j.status; });</script>"
    )
    page.locator("#out").filter(has_text="status 200").wait_for(timeout=10_000)
    assert f"{sqlite_server.url}/test" in urls
    assert urls.count(f"{sqlite_server.url}/test") >= 2
    assert {urlsplit(url).hostname for url in urls} == {"127.0.0.1"}, urls


def test_a_phone_page_is_phone_sized_and_screenshots_go_to_the_folder(
    phone_page: Page, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    phone_page.goto(
        "data:text/html,<!doctype html><meta name=viewport content='width=device-width'><h1>hi</h1>"
    )
    assert phone_page.evaluate("[window.innerWidth, window.innerHeight]") == [390, 844]
    monkeypatch.delenv("OTAKIT_SCREENSHOTS", raising=False)
    screenshot(phone_page, "nowhere")
    assert not list(tmp_path.iterdir())
    monkeypatch.setenv("OTAKIT_SCREENSHOTS", str(tmp_path / "shots"))
    screenshot(phone_page, "phone")
    assert (tmp_path / "shots" / "phone.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

"""A real browser for tests: Debian's Chromium, driven by Playwright's sync API.

Chromium is ``/usr/bin/chromium`` (apt package ``chromium``), or ``OTAKIT_TEST_CHROMIUM``; Playwright's own
browser downloads are never used. A missing browser or ``playwright`` package skips the browser tests,
unless ``OTAKIT_TEST_REQUIRE_BROWSER=1`` (as in CI) turns that into a failure.

Test modules (plain sync tests only, see :func:`browser`) import the fixtures by name::

    from tests.browser import browser, page, phone_page

    __all__ = ["browser", "page", "phone_page"]  # fixtures, used by name

``OTAKIT_SCREENSHOTS`` (e.g. ``docs/screenshots``) makes :func:`screenshot` save full-page PNGs there.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, ViewportSize

__all__ = [
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "browser",
    "chromium_path",
    "launch_browser",
    "page",
    "phone_page",
    "require_browser",
    "screenshot",
]

CHROMIUM = "/usr/bin/chromium"

# Background networking off: this machine's closed network refuses Chromium's calls to Google hosts.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

DESKTOP_VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
PHONE_VIEWPORT: ViewportSize = {"width": 390, "height": 844}


def chromium_path() -> str:
    """The Chromium executable: ``OTAKIT_TEST_CHROMIUM``, else :data:`CHROMIUM`."""
    return os.environ.get("OTAKIT_TEST_CHROMIUM") or CHROMIUM


def require_browser() -> str:
    """The Chromium executable, once it and Playwright are found (else skip, or fail when required)."""
    executable = chromium_path()
    problem = None
    if importlib.util.find_spec("playwright") is None:
        problem = "the playwright package is not installed (pip install -e '.[test]')"
    elif not (os.path.isfile(executable) and os.access(executable, os.X_OK)):
        problem = (
            f"no Chromium executable at {executable} (apt-get install chromium, or set OTAKIT_TEST_CHROMIUM)"
        )
    if problem is not None:
        message = f"no browser for the tests: {problem}"
        if os.environ.get("OTAKIT_TEST_REQUIRE_BROWSER") == "1":
            pytest.fail(message + " (OTAKIT_TEST_REQUIRE_BROWSER=1: the browser tests are mandatory)")
        pytest.skip(message)
    return executable


@contextmanager
def launch_browser() -> Iterator[Browser]:
    """A headless Chromium (see :func:`require_browser`), closed afterwards with its Playwright driver."""
    executable = require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium per test module; each test gets its own context from :func:`page`.

    Not one per session: while Playwright's sync API is alive, its asyncio loop counts as running in this
    thread, so every anyio test (``asyncio.run``) after it would fail with "Cannot run the event loop while
    another loop is running". Per module, the browser is gone before the next module's tests; the tests
    of a browser module itself must be plain sync functions. A launch costs about half a second.
    """
    with launch_browser() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh desktop-sized page (1280x800) in a context of its own."""
    context = browser.new_context(viewport=DESKTOP_VIEWPORT)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def phone_page(browser: Browser) -> Iterator[Page]:
    """A fresh phone-sized page (390x844, mobile) in a context of its own."""
    context = browser.new_context(viewport=PHONE_VIEWPORT, is_mobile=True)
    try:
        yield context.new_page()
    finally:
        context.close()


def screenshot(page: Page, name: str, *, full_page: bool = True) -> None:
    """Save ``<name>.png`` (the whole page, or what the window shows) into ``OTAKIT_SCREENSHOTS`` when
    that is set; else do nothing."""
    folder = os.environ.get("OTAKIT_SCREENSHOTS")
    if not folder:
        return
    target = Path(folder) / f"{name}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(page.screenshot(full_page=full_page))

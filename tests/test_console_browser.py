"""The console in a real browser: logging in and out, the overview against the API, the navigation's
accessible names, the users page, and a phone-sized screen."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser import browser, page, phone_page, screenshot
from tests.console_helpers import OPERATOR, PASSWORD, console_server, login_page
from tests.daemon_packages import Publisher
from tests.servers import ADMIN_HEADERS, RunningServer

__all__ = ["browser", "page", "phone_page"]  # fixtures, used by name

NAV = ("Overview", "Packages", "Devices", "Rollouts", "Users")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    workdir = tmp_path_factory.mktemp("console-browser")
    with console_server(workdir) as running:
        publisher = Publisher(running, workdir)
        try:
            publisher.publish("kiosk-app", "1.0")
            publisher.publish("kiosk-app", "1.1", hold=True)
        finally:
            publisher.close()
        for n in range(3):
            enrolled = httpx.post(
                f"{running.url}/api/v1/devices/register",
                headers={"Authorization": "Bearer enroll-token"},
                json={
                    "device": f"kiosk-{n}",
                    "description": f"kiosk {n} in the lobby",
                    "packages": [{"package": "kiosk-app", "branch": "major", "version": "1.0"}],
                },
            )
            assert enrolled.status_code == 200, enrolled.text
        yield running


def test_a_wrong_password_is_refused_and_the_right_one_logs_in(page: Page, server: RunningServer) -> None:
    page.goto(f"{server.url}/console/devices")
    expect(page).to_have_url(f"{server.url}/console/login?next=%2Fconsole%2Fdevices")
    screenshot(page, "login")
    page.get_by_label("Username").fill(OPERATOR)
    page.get_by_label("Password").fill("not it")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong username or password.")
    expect(page.get_by_label("Username")).to_have_value(OPERATOR)  # kept; the password is not
    expect(page.get_by_label("Password")).to_have_value("")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{server.url}/console/devices")  # where the browser was going


def test_the_overview_shows_what_the_api_says(page: Page, server: RunningServer) -> None:
    login_page(page, server)
    with httpx.Client(base_url=server.url, headers=ADMIN_HEADERS) as admin:
        devices = admin.get("/api/v1/devices").json()
        online = admin.get("/api/v1/devices", params={"online": "true"}).json()
    tiles = page.get_by_role("region", name="Devices")
    expect(tiles.get_by_role("link", name=f"{devices['total']} devices")).to_be_visible()
    expect(tiles.get_by_role("link", name=f"{online['total']} online")).to_be_visible()
    expect(page.get_by_role("link", name="kiosk-app")).to_be_visible()
    for name in NAV:
        expect(page.get_by_role("navigation", name="Main").get_by_role("link", name=name)).to_be_visible()
    expect(page.get_by_role("link", name="Overview")).to_have_attribute("aria-current", "page")
    screenshot(page, "overview")


def test_the_navigation_reaches_every_page(page: Page, server: RunningServer) -> None:
    login_page(page, server)
    for name in NAV:
        page.get_by_role("navigation", name="Main").get_by_role("link", name=name).click()
        expect(page.get_by_role("heading", level=1)).to_have_text(name)
        expect(page.get_by_role("link", name=name)).to_have_attribute("aria-current", "page")


def test_logout_ends_the_session(page: Page, server: RunningServer) -> None:
    login_page(page, server)
    cookie = next(c for c in page.context.cookies() if c["name"] == "otakit_session")
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # no script can read it
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(f"{server.url}/console/login")
    expect(page.get_by_role("status")).to_have_text("You are logged out.")
    page.context.add_cookies([cookie])  # the old cookie, put back by hand, opens nothing
    page.goto(f"{server.url}/console/")
    expect(page).to_have_url(f"{server.url}/console/login?next=%2Fconsole%2F")


def test_an_operator_adds_and_deletes_another(page: Page, server: RunningServer) -> None:
    login_page(page, server)
    page.get_by_role("link", name="Users").click()
    page.get_by_label("New username").fill("second-operator")
    page.get_by_label("New user's password").fill("second-password")
    page.get_by_label("Repeat the password").fill("second-password")
    page.get_by_role("button", name="Add user").click()
    expect(page.get_by_role("status")).to_have_text("Added user second-operator.")
    screenshot(page, "users")
    page.get_by_role("button", name="Log out").click()
    login_page(page, server, "second-operator", "second-password")  # the new operator logs in
    page.get_by_role("link", name="Users").click()
    page.get_by_role("button", name=f"Delete {OPERATOR}").click()
    expect(page.get_by_role("status")).to_have_text(f"Deleted user {OPERATOR}.")
    # The first operator's sessions ended with it; put it back for the other tests.
    page.get_by_label("New username").fill(OPERATOR)
    page.get_by_label("New user's password").fill(PASSWORD)
    page.get_by_label("Repeat the password").fill(PASSWORD)
    page.get_by_role("button", name="Add user").click()
    expect(page.get_by_role("status")).to_have_text(f"Added user {OPERATOR}.")


def test_the_console_fits_a_phone(phone_page: Page, server: RunningServer) -> None:
    login_page(phone_page, server)
    for path in ("/console/", "/console/devices", "/console/packages/kiosk-app", "/console/rollouts"):
        phone_page.goto(f"{server.url}{path}")
        overflow = phone_page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} is {overflow} px wider than the phone"
    phone_page.goto(f"{server.url}/console/")
    screenshot(phone_page, "phone-overview")

"""The console's devices pages on a real server: the list shows, searches, filters and pages the fleet
exactly as ``GET /api/v1/devices`` does; a device's page and its buttons change what the API says;
device-supplied text stays text; and, in a real browser, a real daemon's job moves on the page live."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from markupsafe import escape

from tests.browser import browser, page, screenshot
from tests.console_helpers import client, console_server, csrf_of, login_page, publisher
from tests.daemon_api import running
from tests.daemon_packages import Publisher
from tests.daemons import write_config
from tests.servers import ADMIN_HEADERS, ENROLL_HEADERS, RunningServer
from tests.test_fleet_e2e import wait_for

if TYPE_CHECKING:
    from playwright.sync_api import Page

__all__ = ["browser", "client", "page", "publisher"]  # fixtures, used by name

ADMIN = ADMIN_HEADERS
DEVICES = "/api/v1/devices"
FLEET = 57  # more than a console page (50): the list has two pages
SCRIPT = "<script>window.__pwned=1</script>"
IMG = '<img src=x onerror="window.__pwned=1">'


# -- a fleet of enrolled devices ------------------------------------------------------------------------


def enroll(server: RunningServer, device: str, **body: Any) -> str:
    """Enroll ``device`` as its daemon would; its device token."""
    response = httpx.post(
        f"{server.url}{DEVICES}/register", headers=ENROLL_HEADERS, json={"device": device, **body}
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def post_report(server: RunningServer, device: str, token: str, job: dict[str, Any]) -> None:
    response = httpx.post(
        f"{server.url}{DEVICES}/{device}/reports", headers={"Authorization": f"Bearer {token}"}, json=job
    )
    assert response.status_code == 200, response.text


def heartbeat(server: RunningServer, device: str, token: str) -> None:
    response = httpx.post(
        f"{server.url}{DEVICES}/{device}/heartbeat", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.text


def api_device(server: RunningServer, device: str) -> httpx.Response:
    return httpx.get(f"{server.url}{DEVICES}/{device}", headers=ADMIN)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Manual approval: enrolled devices are pending until accepted (by the API or the console)."""
    workdir = tmp_path_factory.mktemp("console-devices")
    with console_server(workdir, env={"OTAKIT_DEVICE_APPROVAL": "manual"}) as running_server:
        yield running_server


@pytest.fixture(scope="module")
def fleet(server: RunningServer) -> dict[str, str]:
    """``FLEET`` devices ``fleet-NN`` of varied packages, versions, tags, states and descriptions; their
    tokens by id."""
    tokens = {}
    for n in range(FLEET):
        device = f"fleet-{n:02d}"
        packages = [{"package": "app", "branch": "major", "version": "2.0.0" if n % 3 else "1.0"}]
        if n % 4 == 0:
            packages.append({"package": "base", "branch": "major", "version": "5"})
        tokens[device] = enroll(
            server, device, description=f"pump {n} at 50% duty" if n % 7 == 0 else f"Pump{n} 50x duty",
            tags=["eu" if n % 2 else "us", *(["line_3"] if n % 5 == 0 else [])], packages=packages,
        )  # fmt: skip
        if n % 3 != 1:
            assert httpx.post(f"{server.url}{DEVICES}/{device}/accept", headers=ADMIN).status_code == 200
    return tokens


# -- reading the API and the console's HTML -------------------------------------------------------------


def api_walk(server: RunningServer, params: dict[str, str]) -> tuple[list[str], int, dict[str, bool]]:
    """Every device the API lists for ``params`` (page by page): ids, total, online by id."""
    ids: list[str] = []
    online: dict[str, bool] = {}
    after: str | None = None
    total = -1
    while True:
        query = {**params, "limit": "20", **({"after": after} if after else {})}
        response = httpx.get(f"{server.url}{DEVICES}", headers=ADMIN, params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        ids += [device["id"] for device in body["list"]]
        online.update({device["id"]: device["online"] for device in body["list"]})
        total, after = body["total"], body["next"]
        if after is None:
            return ids, total, online


ROW = re.compile(
    r'<td><a href="/console/devices/([^"]+)">[^<]*</a>.*?<span class="badge (online|offline)">(\w+)</span>',
    re.S,
)


def rows_of(page_html: str) -> dict[str, bool]:
    """The listed devices, in order, with their online badge."""
    rows = {}
    for device, badge, word in ROW.findall(page_html):
        assert badge == word
        rows[html.unescape(device)] = word == "online"
    return rows


def total_of(page_html: str) -> int:
    found = re.search(r"(\d+) devices?</p>", page_html)
    assert found is not None, "no total on the page"
    return int(found.group(1))


def link(page_html: str, name: str) -> str | None:
    found = re.search(rf'<a href="([^"]+)"[^>]*>{name}</a>', page_html)
    return html.unescape(found.group(1)) if found else None


def console_walk(client: httpx.Client, params: dict[str, str]) -> tuple[list[str], int, dict[str, bool]]:
    """Every device the console lists for ``params``, following its "Next page" links."""
    response = client.get("/console/devices", params=params)
    ids: list[str] = []
    online: dict[str, bool] = {}
    totals = set()
    while True:
        assert response.status_code == 200, response.text
        rows = rows_of(response.text)
        ids += list(rows)
        online.update(rows)
        totals.add(total_of(response.text))
        following = link(response.text, "Next page")
        if following is None:
            assert len(totals) == 1, totals
            return ids, totals.pop(), online
        assert following.startswith("/console/devices?")
        response = client.get(following)


def same_as_api(
    server: RunningServer, client: httpx.Client, params: dict[str, str]
) -> tuple[list[str], int, dict[str, bool]]:
    """The console's list for ``params`` equals the API's: ids (each once), total and online. Retried
    for a few seconds, since a device may go offline between the two readings."""
    deadline = time.monotonic() + 10
    while True:
        console, api = console_walk(client, params), api_walk(server, params)
        if console == api or time.monotonic() > deadline:
            assert console == api, params
            assert len(set(console[0])) == len(console[0]) == console[1]
            return console
        time.sleep(0.2)


# -- the list ------------------------------------------------------------------------------------------


def test_the_list_shows_and_pages_what_the_api_says(
    server: RunningServer, fleet: dict[str, str], client: httpx.Client
) -> None:
    ids, total, _ = same_as_api(server, client, {})
    assert set(fleet) <= set(ids)
    assert total == len(ids) >= FLEET
    first = client.get("/console/devices")
    assert link(first.text, "First page") is None  # on the first page already
    second = client.get(link(first.text, "Next page") or "")
    assert link(second.text, "First page") == "/console/devices"
    assert set(rows_of(first.text)).isdisjoint(rows_of(second.text))
    assert len(rows_of(first.text)) == 50
    device = ids[0]
    assert f'<a href="/console/devices/{device}">{device}</a>' in first.text  # each id links to its page


@pytest.mark.parametrize(
    "params",
    [
        {"q": "fleet-1"},  # an id's prefix
        {"q": "PUMP 1"},  # in the description, either case
        {"q": "50%"},  # literally: "50x" does not match
        {"q": "leet"},  # not a prefix of an id, in no description
        {"package": "base"},
        {"package": "app", "version": "1.0.0"},  # 1.0.0 finds 1.0
        {"package": "base", "version": "5"},
        {"tag": "line_3"},
        {"state": "pending"},
        {"state": "accepted", "tag": "eu"},
        {"q": "fleet-", "package": "base", "state": "accepted", "tag": "us"},
    ],
    ids=lambda params: "&".join(f"{key}={value}" for key, value in params.items()),
)
def test_search_and_filters_narrow_the_list_as_the_api_does(
    server: RunningServer, fleet: dict[str, str], client: httpx.Client, params: dict[str, str]
) -> None:
    ids, total, _ = same_as_api(server, client, params)
    everyone = api_walk(server, {})[0]
    if params == {"q": "leet"}:
        assert total == 0
    else:
        assert 0 < total < len(everyone), "the filter narrows the list"
    if params == {"q": "50%"}:
        assert ids == [f"fleet-{n:02d}" for n in range(0, FLEET, 7)]
    # The form shows the filters it applied.
    form = client.get("/console/devices", params=params).text
    for key, value in params.items():
        if key in ("online", "state"):
            assert re.search(rf'<option value="{value}" selected>', form)
        else:
            assert re.search(rf'name="{key}"[^>]* value="{re.escape(str(escape(value)))}"', form)


def test_the_online_filter_reads_as_the_api(
    server: RunningServer, fleet: dict[str, str], client: httpx.Client
) -> None:
    alive = {"fleet-03", "fleet-10"}

    def both_kinds() -> bool:
        """Some fleet devices offline (enrolled over 3 heartbeats ago), ``alive`` online (the filter
        reads heartbeats a little late: they are written in batches)."""
        for device in alive:
            heartbeat(server, device, fleet[device])
        online = set(api_walk(server, {"online": "true"})[0])
        return alive <= online and "fleet-00" not in online

    wait_for("online and offline devices", both_kinds)
    ids, _, online = same_as_api(server, client, {"online": "true"})
    assert online["fleet-03"]
    assert alive <= set(ids)
    offline_ids, _, offline = same_as_api(server, client, {"online": "false"})
    assert "fleet-00" in offline_ids
    assert not offline["fleet-00"]
    assert alive.isdisjoint(offline_ids)
    page_html = client.get("/console/devices", params={"online": "true", "q": "fleet-03"}).text
    assert rows_of(page_html) == {"fleet-03": True}
    assert '<span class="badge online">online</span>' in page_html


def test_a_filters_page_links_keep_the_filters(
    server: RunningServer, fleet: dict[str, str], client: httpx.Client
) -> None:
    params = {"q": "fleet-", "package": "app", "tag": "", "online": ""}
    first = client.get("/console/devices", params=params).text
    following = link(first, "Next page")
    assert following is not None
    assert set(following.split("?")[1].split("&")) == {"q=fleet-", "package=app", "after=fleet-49"}
    back = link(client.get(following).text, "First page")
    assert back is not None
    assert "after=" not in back
    assert "package=app" in back


@pytest.mark.parametrize(
    "query",
    ["online=maybe", "state=gone", "package=a/b", "tag=%3Cb%3E", "version=not-a-version!", "q=" + "x" * 101],
)
def test_bad_filters_are_an_error_page(client: httpx.Client, server: RunningServer, query: str) -> None:
    response = client.get(f"/console/devices?{query}")
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert '<p role="alert">' in response.text
    assert httpx.get(f"{server.url}{DEVICES}?{query}", headers=ADMIN).status_code == 400


def test_the_api_searches_too(server: RunningServer, fleet: dict[str, str]) -> None:
    ids, total, _ = api_walk(server, {"q": "FLEET-0"})
    assert ids == [f"fleet-0{n}" for n in range(10)]
    assert total == 10
    assert api_walk(server, {"q": "pump 14 "})[0] == ["fleet-14"]


# -- one device -----------------------------------------------------------------------------------------


def test_an_unknown_device_is_a_404_page(client: httpx.Client) -> None:
    for path in ("/console/devices/no-such-device", "/console/devices/no-such-device/jobs"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "no device no-such-device" in response.text


def test_the_device_page_shows_its_inventory_job_and_reports(
    server: RunningServer, client: httpx.Client
) -> None:
    token = enroll(
        server, "shown-1", description="the lobby kiosk", tags=["eu", "lobby"], attributes={"hw": "rev2"},
        packages=[{"package": "app", "branch": "major", "version": "1.0"}],
    )  # fmt: skip
    for step, progress in (("download", 30), ("BeforeUpdate", 60)):
        post_report(server, "shown-1", token, job_of("j1", "running", step, progress, log=["one", "two"]))
    page_html = client.get("/console/devices/shown-1").text
    assert '<span class="badge state-pending">pending</span>' in page_html
    assert "the lobby kiosk" in page_html
    assert "eu, lobby" in page_html
    assert "rev2" in page_html
    assert '<progress id="progress-app" value="60" max="100">' in page_html
    assert '<label for="progress-app">app: BeforeUpdate · 60 %</label>' in page_html
    assert '<pre class="log" aria-label="app log">one\ntwo</pre>' in page_html
    assert 'hx-get="/console/devices/shown-1/jobs" hx-trigger="every 2s"' in page_html
    assert page_html.count("<td>download</td>") == 1
    assert page_html.count("<td>BeforeUpdate</td>") == 1
    fragment = client.get("/console/devices/shown-1/jobs")
    assert fragment.status_code == 200
    assert fragment.text.lstrip().startswith('<div id="jobs" hx-get="/console/devices/shown-1/jobs"')
    assert fragment.text.count("<td>BeforeUpdate</td>") == 1  # the reports refresh with the jobs
    assert "<html" not in fragment.text
    post_report(
        server, "shown-1", token, job_of("j1", "succeeded", "record", 100, log=["one", "two", "done"])
    )
    fragment_html = client.get("/console/devices/shown-1/jobs").text
    assert '<span class="badge state-succeeded">succeeded</span>' in fragment_html
    assert "one\ntwo\ndone</pre>" in fragment_html


def job_of(
    job_id: str, state: str, step: str, progress: int, *, log: list[str], error: str | None = None
) -> dict[str, Any]:
    """A job as a daemon's ``GET /jobs/{id}`` gives it (``JobReport``)."""
    return {"id": job_id, "package": "app", "action": "update", "state": state, "step": step,
            "from_version": "1.0", "to_version": "2.0", "progress": progress, "error": error,
            "log": log}  # fmt: skip


def form_post(client: httpx.Client, device: str, action: str, **data: str) -> httpx.Response:
    page_html = client.get(f"/console/devices/{device}").text
    return client.post(f"/console/devices/{device}/{action}", data={"csrf": csrf_of(page_html), **data})


def test_accept_pin_unpin_and_delete_through_the_forms(server: RunningServer, client: httpx.Client) -> None:
    enroll(server, "acted-1")

    def seen() -> dict[str, Any]:
        device: dict[str, Any] = api_device(server, "acted-1").json()["device"]
        return device

    assert (seen()["state"], seen()["pinned"]) == ("pending", False)
    # Without the session's CSRF token nothing changes.
    refused = client.post("/console/devices/acted-1/accept", data={"csrf": "forged"})
    assert refused.status_code == 403
    assert seen()["state"] == "pending"
    before = client.get("/console/devices/acted-1").text
    assert ">Accept</button>" in before
    assert ">Pin</button>" in before
    assert ">Unpin</button>" not in before

    done = form_post(client, "acted-1", "accept")
    assert (done.status_code, done.headers["location"]) == (303, "/console/devices/acted-1")
    assert seen()["state"] == "accepted"
    after = client.get("/console/devices/acted-1").text
    assert "Device acted-1 accepted." in after
    assert ">Accept</button>" not in after

    form_post(client, "acted-1", "pin")
    assert seen()["pinned"] is True
    assert ">Unpin</button>" in client.get("/console/devices/acted-1").text
    form_post(client, "acted-1", "unpin")
    assert seen()["pinned"] is False

    unconfirmed = form_post(client, "acted-1", "delete")
    assert unconfirmed.status_code == 303
    assert "tick the box" in client.get("/console/devices/acted-1").text
    assert api_device(server, "acted-1").status_code == 200
    deleted = form_post(client, "acted-1", "delete", confirm="yes")
    assert deleted.headers["location"] == "/console/devices"
    assert api_device(server, "acted-1").status_code == 404
    assert "Device acted-1 deleted" in client.get("/console/devices").text
    # An action on a device that is gone is the API's refusal, as a message.
    csrf = csrf_of(client.get("/console/devices").text)
    gone = client.post("/console/devices/acted-1/pin", data={"csrf": csrf}, follow_redirects=True)
    assert gone.status_code == 404
    assert "no device acted-1" in gone.text


# -- device-supplied text stays text ---------------------------------------------------------------------


def hostile_device(server: RunningServer, device: str) -> None:
    token = enroll(
        server, device, description=SCRIPT, tags=["safe.tag"], attributes={"note": IMG, "x": SCRIPT},
        packages=[{"package": "app", "branch": "major", "version": "1.0"}],
    )  # fmt: skip
    post_report(
        server, device, token, job_of("evil", "failed", "AfterUpdate", 90, log=[IMG, SCRIPT], error=IMG)
    )


def test_device_text_is_escaped_in_the_html(server: RunningServer, client: httpx.Client) -> None:
    hostile_device(server, "hostile-1")
    pages = [
        client.get("/console/devices", params={"q": "hostile-1"}).text,
        client.get("/console/devices/hostile-1").text,
        client.get("/console/devices/hostile-1/jobs").text,
    ]
    for page_html in pages:
        assert SCRIPT not in page_html
        assert IMG not in page_html
        assert "window.__pwned" in page_html
        assert "<script>" not in page_html.replace(
            '<script src="/console/static/htmx.min.js" defer></script>', ""
        )
    assert escape(SCRIPT) in pages[0]
    assert escape(IMG) in pages[1]
    assert escape(SCRIPT) in pages[1]
    assert escape(IMG) in pages[2]


def test_device_text_stays_text_in_the_browser(server: RunningServer, page: Page) -> None:
    from playwright.sync_api import expect

    hostile_device(server, "hostile-2")
    login_page(page, server)
    page.goto(f"{server.url}/console/devices?q=hostile-2")
    expect(page.get_by_role("cell", name=SCRIPT)).to_be_visible()
    assert page.evaluate("window.__pwned") is None
    page.goto(f"{server.url}/console/devices/hostile-2")
    expect(page.get_by_text(SCRIPT).first).to_be_visible()
    expect(page.locator(".job .error")).to_have_text(IMG)
    log = page.get_by_label("app log")
    expect(log).to_have_text(f"{IMG}\n{SCRIPT}")
    assert page.locator("img").count() == 0
    page.evaluate("document.getElementById('jobs').dataset.before = 'swap'")
    expect(page.locator("#jobs[data-before]")).to_have_count(0)  # the jobs' refresh (every 2 s) came
    expect(log).to_have_text(f"{IMG}\n{SCRIPT}")
    assert page.locator("img").count() == 0
    assert page.evaluate("window.__pwned") is None


# -- the browser: the list's form, the buttons, a real daemon's live job -----------------------------------


def test_the_list_in_a_browser(server: RunningServer, page: Page) -> None:
    from playwright.sync_api import expect

    kiosks = {}
    for name, version, tags in (
        ("kiosk-lobby", "2.1.0", ["eu", "lobby"]), ("kiosk-hall", "2.1.0", ["eu"]),
        ("kiosk-gate", "2.0.3", ["us", "gate"]), ("kiosk-cafe", "2.1.0", ["us"]),
    ):  # fmt: skip
        kiosks[name] = enroll(
            server, name, description=f"Info screen, {name.split('-')[1]}", tags=tags,
            packages=[{"package": "signage", "branch": "major", "version": version}],
        )  # fmt: skip
        httpx.post(f"{server.url}{DEVICES}/{name}/accept", headers=ADMIN)

    def hall_offline() -> bool:
        """The others heartbeat; the hall, silent, goes offline 3 heartbeats after its enrollment."""
        for name in ("kiosk-lobby", "kiosk-gate", "kiosk-cafe"):
            heartbeat(server, name, kiosks[name])
        return not api_device(server, "kiosk-hall").json()["device"]["online"]

    wait_for("kiosk-hall offline", hall_offline)
    login_page(page, server)
    page.get_by_role("link", name="Devices", exact=True).click()
    page.get_by_label("Search").fill("KIOSK")
    page.get_by_label("Package").fill("signage")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("status")).to_have_text("4 devices")
    for name in kiosks:
        expect(page.get_by_role("link", name=name)).to_be_visible()
    expect(page.get_by_role("row").filter(has_text="kiosk-lobby")).to_contain_text("online")
    expect(page.get_by_role("row").filter(has_text="kiosk-hall")).to_contain_text("offline")
    expect(page.get_by_role("row").filter(has_text="kiosk-gate")).to_contain_text("signage 2.0.3")
    screenshot(page, "devices")
    page.get_by_label("Tag").fill("us")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("status")).to_have_text("2 devices")
    assert "tag=us" in page.url
    assert "q=KIOSK" in page.url
    page.get_by_role("link", name="kiosk-gate").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("kiosk-gate")


def test_accept_pin_unpin_and_delete_from_the_buttons(server: RunningServer, page: Page) -> None:
    from playwright.sync_api import expect

    enroll(server, "clicked-1", description="a new unit")

    def seen() -> dict[str, Any]:
        device: dict[str, Any] = api_device(server, "clicked-1").json()["device"]
        return device

    login_page(page, server)
    page.goto(f"{server.url}/console/devices/clicked-1")
    expect(page.get_by_role("heading", level=1)).to_contain_text("pending")
    page.get_by_role("button", name="Accept").click()
    expect(page.get_by_role("status")).to_have_text("Device clicked-1 accepted.")
    expect(page.get_by_role("button", name="Accept")).to_have_count(0)
    assert seen()["state"] == "accepted"
    page.get_by_role("button", name="Pin").click()
    expect(page.get_by_role("button", name="Unpin")).to_be_visible()
    assert seen()["pinned"] is True
    page.get_by_role("button", name="Unpin").click()
    expect(page.get_by_role("button", name="Pin")).to_be_visible()
    assert seen()["pinned"] is False
    page.get_by_role("button", name="Delete").click()  # unconfirmed: the browser does not even send it
    assert api_device(server, "clicked-1").status_code == 200
    page.get_by_label("Yes, delete this device").check()
    page.get_by_role("button", name="Delete").click()
    page.wait_for_url(f"{server.url}/console/devices")
    expect(page.get_by_role("status").first).to_contain_text("Device clicked-1 deleted")
    assert api_device(server, "clicked-1").status_code == 404


def test_a_real_daemons_job_moves_on_the_page_without_a_reload(
    server: RunningServer, page: Page, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    package = "console-live"
    publisher = Publisher(server, tmp_path / "publish")
    try:
        publisher.publish(package, "1.0")
        config = write_config(
            tmp_path / "unit", device="live-unit", description="a real daemon", registry=server.url,
            enroll_token="enroll-token", tags=["lab"], attributes={"site": "bench"},
        )  # fmt: skip
        with running(config) as daemon:
            daemon.install(publisher, package, version="1.0")
            wait_for(
                "the install reported",
                lambda: (
                    (api_device(server, "live-unit").json().get("device") or {}).get("jobs", {}).get(package)
                ),
            )
            login_page(page, server)
            page.goto(f"{server.url}/console/devices/live-unit")
            jobs = page.get_by_role("region", name="Jobs")
            expect(jobs).to_contain_text("succeeded", timeout=20_000)
            expect(jobs).to_contain_text(f"{package} 1.0 installed")
            page.evaluate("window.__marker = 1")

            publisher.publish(package, "2.0", before="sleep 4")  # a slow BeforeUpdate
            job = daemon.start_job("POST", f"/packages/{package}/update")
            progress = page.get_by_role("progressbar", name=re.compile(package))
            expect(progress).to_have_accessible_name(
                re.compile(rf"^{package}: BeforeUpdate · \d+ %$"), timeout=20_000
            )
            expect(jobs).to_contain_text("running")
            expect(jobs).to_contain_text("1.0 → 2.0")
            expect(jobs).to_contain_text(f"{package} 2.0 installed", timeout=30_000)
            expect(jobs.locator(".badge")).to_have_text("succeeded")
            expect(progress).to_have_attribute("value", "100")
            reports = page.get_by_role("region", name="Reports")
            expect(reports.get_by_role("row").filter(has_text="BeforeUpdate").first).to_contain_text(
                "1.0 → 2.0"
            )
            assert daemon.wait_job(job["id"])["state"] == "succeeded"
            assert page.evaluate("window.__marker") == 1
            assert page.evaluate('performance.getEntriesByType("navigation").length') == 1
            expect(page.get_by_role("heading", level=1)).to_contain_text("online")

            def runs_2() -> bool:  # the inventory comes with the daemon's next heartbeat
                packages = api_device(server, "live-unit").json()["device"]["packages"]
                return [p["version"] for p in packages] == ["2.0"]

            wait_for("the inventory", runs_2)
            page.reload()  # the inventory is not live: the page, loaded again, shows it
            expect(page.get_by_role("region", name="Inventory")).to_contain_text("2.0")
            screenshot(page, "device")
    finally:
        publisher.close()

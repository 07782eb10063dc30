"""The console's rollouts pages on a real server: the list and its start form, one rollout's page and its
buttons (the same rules and sentences as the JSON API), and, in a real browser on a fleet of real daemons,
a staged rollout run from start to end, an aborted one, and one that pauses itself, shown live."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.browser import browser, page, screenshot
from tests.console_helpers import client, console_server, csrf_of, login_page, publisher
from tests.daemon_api import Api
from tests.daemon_packages import Publisher
from tests.servers import ADMIN_HEADERS, RunningServer
from tests.test_fleet_e2e import daemons, ids_by_cohort, rollout_of, start_rollout, wait_for

if TYPE_CHECKING:
    from playwright.sync_api import Page

__all__ = ["browser", "client", "page", "publisher"]  # fixtures, used by name

ADMIN = ADMIN_HEADERS
BUTTONS = ("Advance", "Pause", "Resume", "Abort")
# Fails where the device's folder holds FAIL_MARKER: one unit of the fleet whose AfterUpdate fails.
FAIL_MARKER = "fail-after-update"
FAILING_AFTER = (
    f'if [ -e "$(dirname "$OTAKIT_LOCAL")/{FAIL_MARKER}" ]; then echo "self-test failed" >&2; exit 1; fi'
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with console_server(tmp_path_factory.mktemp("console-rollouts")) as running:
        yield running


# -- helpers ------------------------------------------------------------------------------------------


def api_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    error: str = response.json()["error"]
    return error


def text_of(page_html: str) -> str:
    """A page's text: tags dropped, entities decoded, white space collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page_html)).split())


def buttons(page_html: str) -> list[str]:
    return [name for name in re.findall(r"<button[^>]*>([^<]+)</button>", page_html) if name in BUTTONS]


def flash(response: httpx.Response) -> str:
    """The flash message on the page a form's redirect leads to."""
    found = re.search(r'<p class="flash [^"]*"[^>]*>([^<]*)</p>', response.text)
    assert found is not None, response.text
    return html.unescape(found.group(1))


def post_form(client: httpx.Client, url: str, page_url: str, **fields: str) -> httpx.Response:
    """POST a console form with the session's CSRF token (read from ``page_url``), following the redirect."""
    token = csrf_of(client.get(page_url).text)
    response = client.post(url, data={"csrf": token, **fields})
    assert response.status_code == 303, response.text
    return client.get(response.headers["location"])


def percent(value: float) -> str:
    return f"{value * 100:.1f} %"


def held_and_released(publisher: Publisher, package: str, *held: str) -> None:
    publisher.publish(package, "1.0")
    for version in held:
        publisher.publish(package, version, hold=True)


def released(server: RunningServer, package: str, version: str) -> bool:
    listed = httpx.get(f"{server.url}/getVersion", params={"package": package, "branch": "major"}).json()
    for entry in listed["list"]:
        if entry["version"] == version:
            return bool(entry["released"])
    raise AssertionError(f"no {package} {version} in {listed}")


# -- over HTTP ----------------------------------------------------------------------------------------


def test_the_list_and_the_page_show_what_the_api_says(
    server: RunningServer, client: httpx.Client, publisher: Publisher, pkg: str
) -> None:
    held_and_released(publisher, pkg, "1.1", "1.2")
    created = start_rollout(
        server, pkg, "1.1", phases=[10, 50, 100], max_failure_rate=0.25, min_reports=4, tags=["lab"]
    )
    rollout = rollout_of(server, created["id"])

    listed = client.get("/console/rollouts")
    assert listed.status_code == 200
    assert f'href="/console/rollouts/{rollout["id"]}"' in listed.text
    row = text_of(listed.text.split(f'href="/console/rollouts/{rollout["id"]}"')[1].split("</tr>")[0])
    assert f"{pkg} major" in row
    assert rollout["version"] in row
    assert "1/3 · 10 %" in row
    assert rollout["state"] == "running"
    assert "running" in row
    assert percent(rollout["failure_rate"]) in row
    # The start form offers the held versions that could be rolled out, not the released one.
    assert f'value="{pkg}/major/1.2"' in listed.text
    assert f'value="{pkg}/major/1.1"' in listed.text
    assert f'value="{pkg}/major/1.0"' not in listed.text
    assert f'href="/console/rollouts/{rollout["id"]}"' in client.get("/console/rollouts?state=running").text
    assert (
        f'href="/console/rollouts/{rollout["id"]}"' not in client.get("/console/rollouts?state=paused").text
    )

    shown = client.get(f"/console/rollouts/{rollout['id']}")
    assert shown.status_code == 200
    text = text_of(shown.text)
    assert f"State: {rollout['state']}" in text
    assert f"Phase {rollout['phase'] + 1} of {len(rollout['phases'])}: offered to 10 % of the fleet" in text
    counts = rollout["counts"]
    assert (
        f"Succeeded {counts['succeeded']} Failed {counts['failed']} In progress {counts['in_progress']}"
        in text
    )
    assert f"Failure rate {percent(rollout['failure_rate'])} (pauses above 25.0 %)" in text
    assert "Phases 10 % → 50 % → 100 %" in text
    assert "Tags lab" in text
    assert "Min reports 4" in text
    assert f'href="/console/packages/{pkg}"' in shown.text
    assert buttons(shown.text) == ["Advance", "Pause", "Abort"]
    live = client.get(f"/console/rollouts/{rollout['id']}/live")
    assert live.status_code == 200
    assert "<html" not in live.text
    assert f'hx-get="/console/rollouts/{rollout["id"]}/live"' in live.text
    assert 'hx-trigger="every 2s"' in live.text
    assert client.get("/console/rollouts/999999").status_code == 404


def test_the_start_form_leaves_out_held_versions_below_the_released_one(
    client: httpx.Client, publisher: Publisher, pkg: str
) -> None:
    held_and_released(publisher, pkg, "0.9", "1.1")  # 1.0 released; 0.9 could never be rolled out
    page = client.get("/console/rollouts").text
    assert f'value="{pkg}/major/1.1"' in page
    assert f'value="{pkg}/major/0.9"' not in page


def test_the_start_form_starts_a_rollout_under_the_apis_rules(
    server: RunningServer, client: httpx.Client, publisher: Publisher, pkg: str
) -> None:
    held_and_released(publisher, pkg, "1.1")
    target = f"{pkg}/major/1.1"
    form = {"target": target, "min_reports": "2", "phase_seconds": "", "tags": ""}

    # A bad value: the same sentence as the API's 400 for the same body, and nothing started.
    refused = post_form(client, "/console/rollouts", "/console/rollouts", **form, phases="50, 10, 100",
                        max_failure_percent="25")  # fmt: skip
    body = {"package": pkg, "branch": "major", "version": "1.1", "phases": [50, 10, 100]}
    expected = api_error(httpx.post(f"{server.url}/api/v1/rollouts", headers=ADMIN, json=body), 400)
    assert flash(refused) == expected
    assert str(refused.url).endswith("/console/rollouts")
    for phases, rate, sentence in [
        ("10, fifty, 100", "25", "phases: 'fifty' is not a number"),
        ("10, 100", "150", "max_failure_rate must be a number in [0, 1], not 1.5"),
    ]:
        assert flash(post_form(client, "/console/rollouts", "/console/rollouts", **form, phases=phases,
                               max_failure_percent=rate)) == sentence  # fmt: skip
    assert (
        httpx.get(f"{server.url}/api/v1/rollouts", headers=ADMIN, params={"package": pkg}).json()["list"]
        == []
    )

    started = post_form(client, "/console/rollouts", "/console/rollouts",
                        **{**form, "phase_seconds": "3600", "tags": "lab, kiosk"}, phases="10, 100",
                        max_failure_percent="25")  # fmt: skip
    found = re.search(r"/console/rollouts/(\d+)$", str(started.url))
    assert found is not None, started.url
    rollout = rollout_of(server, int(found.group(1)))
    assert flash(started) == f"Started rollout #{rollout['id']} of {pkg} 1.1."
    assert (rollout["package"], rollout["version"], rollout["state"]) == (pkg, "1.1", "running")
    assert rollout["phases"] == [10, 100]
    assert rollout["max_failure_rate"] == 0.25
    assert (rollout["min_reports"], rollout["phase_seconds"], rollout["tags"]) == (2, 3600, ["lab", "kiosk"])

    # A second one of the same package and branch: the API's 409 sentence.
    again = post_form(client, "/console/rollouts", "/console/rollouts", **form, phases="10, 100",
                      max_failure_percent="25")  # fmt: skip
    body = {"package": pkg, "branch": "major", "version": "1.1"}
    assert flash(again) == api_error(
        httpx.post(f"{server.url}/api/v1/rollouts", headers=ADMIN, json=body), 409
    )


def test_each_button_does_what_the_json_action_does(
    server: RunningServer, client: httpx.Client, publisher: Publisher, pkg: str
) -> None:
    held_and_released(publisher, pkg, "1.1")
    rollout = start_rollout(server, pkg, "1.1", phases=[10, 50, 100])
    page_url = f"/console/rollouts/{rollout['id']}"

    def press(action: str) -> httpx.Response:
        return post_form(client, f"{page_url}/{action}", page_url)

    paused = press("pause")
    assert flash(paused) == f"Paused rollout #{rollout['id']}: it is paused."
    now = rollout_of(server, rollout["id"])
    assert (now["state"], now["paused_reason"], now["phase"]) == ("paused", "operator", 0)
    assert "State: paused" in text_of(paused.text)
    assert "Paused: by an operator" in text_of(paused.text)
    assert buttons(paused.text) == ["Resume", "Abort"]

    # Refused: the same sentence as the API's 409, and the rollout unchanged.
    refused = press("advance")
    assert flash(refused) == api_error(
        httpx.post(f"{server.url}/api/v1/rollouts/{rollout['id']}/advance", headers=ADMIN), 409
    )
    assert rollout_of(server, rollout["id"])["state"] == "paused"

    resumed = press("resume")
    assert rollout_of(server, rollout["id"])["state"] == "running"
    assert buttons(resumed.text) == ["Advance", "Pause", "Abort"]
    assert "Paused:" not in resumed.text
    refused = press("resume")
    assert "cannot resume a rollout that is running" in flash(refused)
    assert flash(refused) == api_error(
        httpx.post(f"{server.url}/api/v1/rollouts/{rollout['id']}/resume", headers=ADMIN), 409
    )

    advanced = press("advance")
    assert rollout_of(server, rollout["id"])["phase"] == 1
    assert "Phase 2 of 3: offered to 50 % of the fleet" in text_of(advanced.text)
    done = press("advance")
    now = rollout_of(server, rollout["id"])
    assert (now["state"], now["phase"]) == ("completed", 2)
    assert released(server, pkg, "1.1")
    assert buttons(done.text) == []
    assert "State: completed" in text_of(done.text)
    live = client.get(f"{page_url}/live").text
    assert "hx-get" not in live  # an ended rollout does not change: its page stops asking
    assert flash(press("abort")) == api_error(
        httpx.post(f"{server.url}/api/v1/rollouts/{rollout['id']}/abort", headers=ADMIN), 409
    )

    publisher.publish(pkg, "1.2", hold=True)
    second = start_rollout(server, pkg, "1.2", phases=[10, 100])
    aborted = post_form(
        client, f"/console/rollouts/{second['id']}/abort", f"/console/rollouts/{second['id']}"
    )
    assert rollout_of(server, second["id"])["state"] == "aborted"
    assert not released(server, pkg, "1.2")
    assert buttons(aborted.text) == []
    assert "1.2 stays held" in text_of(aborted.text)
    assert (
        flash(post_form(client, "/console/rollouts/999999/pause", "/console/rollouts")) == "no rollout 999999"
    )


def test_a_form_without_the_sessions_csrf_token_is_refused_and_changes_nothing(
    server: RunningServer, client: httpx.Client, publisher: Publisher, pkg: str
) -> None:
    held_and_released(publisher, pkg, "1.1")
    rollout = start_rollout(server, pkg, "1.1", phases=[10, 100])
    for data in ({}, {"csrf": "not-the-token"}):
        for action in ("pause", "abort", "advance"):
            response = client.post(f"/console/rollouts/{rollout['id']}/{action}", data=data)
            assert response.status_code == 403, response.text
            assert "CSRF" in response.text
        form = {"target": f"{pkg}/major/1.1", "phases": "10, 100", **data}
        assert client.post("/console/rollouts", data=form).status_code == 403
    now = rollout_of(server, rollout["id"])
    assert (now["state"], now["phase"], now["updated"]) == ("running", 0, rollout["updated"])
    assert (
        len(httpx.get(f"{server.url}/api/v1/rollouts", headers=ADMIN, params={"package": pkg}).json()["list"])
        == 1
    )
    # Without a session: the login page, not an action.
    anonymous = httpx.post(f"{server.url}/console/rollouts/{rollout['id']}/pause", data={"csrf": "x"})
    assert anonymous.status_code == 401
    assert rollout_of(server, rollout["id"])["state"] == "running"


# -- in the browser, on a fleet of real daemons -------------------------------------------------------


def check_all(apis: dict[str, Api]) -> None:
    """Ask every daemon to check for updates now (they poll; the test does not wait for their timers)."""
    for api in apis.values():
        api.run_job("POST", "/check")


def versions(apis: dict[str, Api], package: str) -> dict[str, str | None]:
    return {device: api.version(package) for device, api in apis.items()}


def navigations(page: Page) -> list[str]:
    """The URLs the page's main frame navigates to from now on: a live update adds none."""
    seen: list[str] = []
    page.on("framenavigated", lambda frame: seen.append(frame.url) if frame == page.main_frame else None)
    return seen


def start_from_form(
    page: Page, server: RunningServer, target: str, phases: str, rate: str, reports: str
) -> int:
    page.goto(f"{server.url}/console/rollouts")
    page.get_by_label("Version to roll out").select_option(value=target)
    page.get_by_label("Phases (%)").fill(phases)
    page.get_by_label("Max failure rate (%)").fill(rate)
    page.get_by_label("Min reports").fill(reports)
    page.get_by_role("button", name="Start rollout").click()
    page.wait_for_url(re.compile(r".*/console/rollouts/\d+$"))
    return int(page.url.rsplit("/", 1)[1])


def test_an_operator_runs_a_staged_rollout_from_the_browser_on_real_daemons(
    server: RunningServer, publisher: Publisher, page: Page, tmp_path: Path, pkg: str
) -> None:
    from playwright.sync_api import expect

    inside, outside = ids_by_cohort(pkg, "1.1", 25, inside=2, outside=2)
    held_and_released(publisher, pkg, "1.1")
    with ExitStack() as stack:
        apis = daemons(stack, tmp_path, server, publisher, inside + outside)
        for api in apis.values():
            api.install(publisher, pkg, version="1.0")
        login_page(page, server)

        rollout_id = start_from_form(page, server, f"{pkg}/major/1.1", "25, 60, 100", "50", "1")
        state = page.locator("#rollout-state")
        expect(state).to_have_text("running")
        expect(page.locator("#rollout-phase")).to_have_text("Phase 1 of 3: offered to 25 % of the fleet")
        expect(page.get_by_role("status")).to_have_text(f"Started rollout #{rollout_id} of {pkg} 1.1.")

        moved = navigations(page)
        check_all(apis)
        wait_for("the cohort updated", lambda: all(apis[d].version(pkg) == "1.1" for d in inside))
        # The page follows the reports by itself: no reload, no click.
        expect(page.locator("#count-succeeded")).to_have_text("2", timeout=15_000)
        expect(page.locator("#rollout-installs")).to_have_text("Installs: 2 succeeded of 2 started")
        assert moved == [], moved
        assert all(apis[d].version(pkg) == "1.0" for d in outside)  # not in the first 25 %

        page.get_by_role("button", name="Pause").click()
        expect(state).to_have_text("paused")
        expect(page.locator("#paused-reason")).to_have_text("Paused: by an operator")
        expect(page.get_by_role("button", name="Pause")).to_have_count(0)
        assert rollout_of(server, rollout_id)["state"] == "paused"
        page.get_by_role("button", name="Resume").click()
        expect(state).to_have_text("running")
        expect(page.locator("#paused-reason")).to_have_count(0)

        page.get_by_role("button", name="Advance").click()
        expect(page.locator("#rollout-phase")).to_have_text("Phase 2 of 3: offered to 60 % of the fleet")
        page.get_by_role("button", name="Advance").click()
        expect(state).to_have_text("completed")
        for name in BUTTONS:
            expect(page.get_by_role("button", name=name)).to_have_count(0)
        assert rollout_of(server, rollout_id)["state"] == "completed"
        check_all(apis)
        wait_for("everyone on 1.1", lambda: set(versions(apis, pkg).values()) == {"1.1"})

        # A second rollout, aborted from its button: 1.2 stays held and no daemon installs it.
        publisher.publish(pkg, "1.2", hold=True)
        second = start_from_form(page, server, f"{pkg}/major/1.2", "50, 100", "5", "20")
        page.get_by_role("button", name="Abort").click()
        expect(state).to_have_text("aborted")
        expect(page.get_by_text("1.2 stays held")).to_be_visible()
        assert rollout_of(server, second)["state"] == "aborted"
        assert not released(server, pkg, "1.2")
        check_all(apis)
        assert set(versions(apis, pkg).values()) == {"1.1"}

        page.get_by_role("link", name="Rollouts", exact=True).first.click()
        expect(page.get_by_role("link", name=f"#{second}")).to_be_visible()
        row = page.get_by_role("row").filter(has=page.get_by_role("link", name=f"#{rollout_id}", exact=True))
        expect(row.locator(".badge")).to_have_text("completed")
        screenshot(page, "rollouts")


def test_a_rollout_that_pauses_itself_shows_paused_and_why_live(
    server: RunningServer, publisher: Publisher, page: Page, tmp_path: Path, pkg: str
) -> None:
    from playwright.sync_api import expect

    inside, outside = ids_by_cohort(pkg, "1.1", 50, inside=3, outside=1)
    publisher.publish(pkg, "1.0")
    publisher.publish(pkg, "1.1", hold=True, after=FAILING_AFTER)
    with ExitStack() as stack:
        apis = daemons(stack, tmp_path, server, publisher, inside + outside)
        for api in apis.values():
            api.install(publisher, pkg, version="1.0")
        failing = inside[2]
        (tmp_path / failing / FAIL_MARKER).write_text("this unit's self-test fails\n")
        rollout = start_rollout(server, pkg, "1.1", phases=[50, 100], max_failure_rate=0.25, min_reports=3)
        login_page(page, server)
        page.goto(f"{server.url}/console/rollouts/{rollout['id']}")
        expect(page.locator("#rollout-state")).to_have_text("running")
        moved = navigations(page)

        for device in inside[:2]:
            apis[device].run_job("POST", "/check")
        expect(page.locator("#count-succeeded")).to_have_text("2", timeout=30_000)
        apis[failing].run_job("POST", "/check")
        wait_for("the failing unit rolled back", lambda: apis[failing].version(pkg) == "1.0")
        # 1 failed of max(3 reported, 3 minimum) = 33.3 % > 25 %: it paused itself, and the page shows it.
        expect(page.locator("#rollout-state")).to_have_text("paused", timeout=30_000)
        reason = rollout_of(server, rollout["id"])["paused_reason"]
        assert reason.startswith("1 of 3 reported installs failed (33.3 % > 25.0 %)"), reason
        expect(page.locator("#paused-reason")).to_have_text(f"Paused: {reason}")
        expect(page.locator("#count-failed")).to_have_text("1")
        expect(page.locator("#failure-rate")).to_contain_text("33.3 %")
        expect(page.get_by_role("button", name="Resume")).to_be_visible()
        expect(page.get_by_role("button", name="Advance")).to_have_count(0)
        assert moved == [], moved
        screenshot(page, "rollout")

        apis[outside[0]].run_job("POST", "/check")  # paused: nobody new is offered 1.1
        assert versions(apis, pkg) == {**{d: "1.1" for d in inside[:2]}, failing: "1.0", outside[0]: "1.0"}

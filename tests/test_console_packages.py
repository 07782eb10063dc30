"""The console's packages pages on a real server: the list and one package's versions as the JSON API
sees them, release / hold / delete (the API's own rules and sentences), the chart of the versions the
fleet runs, and uploads from a form, streamed and refused exactly as ``PUT /upload`` — over HTTP and in
a real browser."""

from __future__ import annotations

import hashlib
import html
import json
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.browser import browser, page, screenshot
from tests.console_helpers import client, console_server, csrf_of, login_page, publisher
from tests.daemon_packages import Publisher
from tests.samples import content_for, make_zip
from tests.servers import ADMIN_HEADERS, ENROLL_HEADERS, RunningServer

if TYPE_CHECKING:
    from playwright.sync_api import Page

__all__ = ["browser", "client", "page", "publisher"]  # fixtures, used by name

ADMIN = ADMIN_HEADERS
UPLOAD = "/console/packages/upload"
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with console_server(tmp_path_factory.mktemp("console-packages")) as running:
        yield running


@pytest.fixture
def name() -> str:
    """A package name of the test's own, on the module's shared server."""
    return f"pkg-{uuid.uuid4().hex[:8]}"


# -- helpers ------------------------------------------------------------------------------------------


def flash(response: httpx.Response) -> str:
    """The flash message on the page a form's redirect leads to."""
    found = re.search(r'<p class="flash [^"]*"[^>]*>([^<]*)</p>', response.text)
    assert found is not None, response.text
    return html.unescape(found.group(1))


def followed(client: httpx.Client, response: httpx.Response) -> httpx.Response:
    assert response.status_code == 303, response.text
    return client.get(response.headers["location"])


def versions(server: RunningServer, package: str) -> list[dict[str, Any]]:
    """``/getVersion``'s list (every branch, highest first), [] for none."""
    response = httpx.get(f"{server.url}/getVersion", params={"package": package})
    if response.status_code == 404:
        return []
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["list"]
    return found


def latest(server: RunningServer, package: str, branch: str = "major") -> str | None:
    response = httpx.get(f"{server.url}/latestVersion", params={"package": package, "branch": branch})
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    version: str = response.json()["content.json"]["version"]
    return version


def api_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    error: str = response.json()["error"]
    return error


def incoming(server: RunningServer) -> list[Path]:
    """What the local store holds of uploads in flight (``<root>/.incoming``)."""
    return sorted((server.files_dir / ".incoming").iterdir())


def objects(server: RunningServer) -> list[Path]:
    return sorted((server.files_dir / ".objects").iterdir())


def console_upload(
    client: httpx.Client,
    content: dict[str, Any],
    data: bytes,
    *,
    csrf: str | None,
    first: tuple[str, ...] = (),
    headers: dict[str, str] | None = None,
    file_first: bool = False,
) -> httpx.Response:
    """POST the upload form as a browser sends it: csrf, the ``first`` checkboxes, content, file."""
    parts: list[tuple[str, Any]] = []
    if csrf is not None:
        parts.append(("csrf", (None, csrf)))
    parts += [(box, (None, "1")) for box in first]
    content_part = ("content", ("content.json", json.dumps(content).encode(), "application/json"))
    file_part = ("file", ("package.zip", data, "application/zip"))
    parts += [file_part, content_part] if file_first else [content_part, file_part]
    if file_first and csrf is not None:  # the token after the file
        parts.append(parts.pop(0))
    return client.post(UPLOAD, files=parts, headers=headers)


def token(client: httpx.Client) -> str:
    return csrf_of(client.get("/console/packages").text)


def register(server: RunningServer, device: str, *packages: tuple[str, str, str]) -> None:
    body = {
        "device": device,
        "packages": [{"package": p, "branch": b, "version": v} for p, b, v in packages],
    }
    response = httpx.post(f"{server.url}/api/v1/devices/register", headers=ENROLL_HEADERS, json=body)
    assert response.status_code == 200, response.text


def chart_bars(page_html: str) -> list[tuple[str, int]]:
    """The package page's chart as (version, count) per bar, read from the SVG as XML."""
    found = re.search(r"<svg .*?</svg>", page_html, re.S)
    assert found is not None, "no chart on the page"
    root = ET.fromstring(found.group(0))  # noqa: S314 (the server's own markup)
    assert root.get("role") == "img"
    assert root.find(f"{SVG}title") is not None
    return [
        (rect.get("data-version", ""), int(rect.get("data-count", "-1")))
        for rect in root.iter(f"{SVG}rect")
        if rect.get("class") == "bar"
    ]


def rows_of(page_html: str, branch: str) -> list[str]:
    """The rows of one branch's versions table, as text."""
    section = re.search(rf"<h2[^>]*>Branch {re.escape(branch)}</h2>(.*?)</section>", page_html, re.S)
    assert section is not None, f"no branch {branch} on the page"
    body = re.search(r"<tbody>(.*?)</tbody>", section.group(1), re.S)
    assert body is not None
    rows = re.findall(r"<tr>(.*?)</tr>", body.group(1), re.S)
    return [" ".join(html.unescape(re.sub(r"<[^>]+>", " ", row)).split()) for row in rows]


def start_rollout(server: RunningServer, package: str, version: str) -> int:
    body = {"package": package, "branch": "major", "version": version, "phases": [10, 100]}
    response = httpx.post(f"{server.url}/api/v1/rollouts", headers=ADMIN, json=body)
    assert response.status_code == 201, response.text
    rollout_id: int = response.json()["rollout"]["id"]
    return rollout_id


def packed(workdir: Path, package: str, version: str, **extra: Any) -> tuple[Path, Path, bytes]:
    """A zip and its content.json on disk, as a developer would pick them in the browser."""
    data = make_zip({"version.txt": f"{package} {version}\n".encode(), "blob.bin": uuid.uuid4().bytes * 999})
    workdir.mkdir(parents=True, exist_ok=True)
    zip_path = workdir / f"{package}-{version}.zip"
    zip_path.write_bytes(data)
    content_path = workdir / "content.json"
    content_path.write_text(json.dumps(content_for(data, package, version, **extra)))
    return zip_path, content_path, data


# -- the pages show what the API says -----------------------------------------------------------------


def test_the_list_and_the_package_page_show_what_the_api_says(
    server: RunningServer, client: httpx.Client, publisher: Publisher, name: str
) -> None:
    first = publisher.publish(name, "1.0.0")
    publisher.publish(name, "1.10.0", hold=True)
    publisher.publish(name, "1.9.0")
    publisher.publish(name, "2.0.0", branch="beta")
    rollout_id = start_rollout(server, name, "1.10.0")

    listing = client.get("/console/packages")
    assert listing.status_code == 200
    assert "style=" not in listing.text
    assert "<script>" not in listing.text
    for branch, count in (("beta", 1), ("major", 3)):
        row = re.search(
            rf'<tr>\s*<td><a href="/console/packages/{name}">{name}</a></td>\s*<td>{branch}</td>(.*?)</tr>',
            listing.text,
            re.S,
        )
        assert row is not None, f"no row for {name} {branch}"
        cells = re.findall(r"<td>(.*?)</td>", row.group(1), re.S)
        assert cells[0] == str(count)
        assert cells[1] == latest(server, name, branch)  # the highest released, not the held 1.10.0
        if branch == "major":
            assert f'href="/console/rollouts/{rollout_id}"' in cells[2]
            assert "running" in cells[2]
        else:
            assert "none" in cells[2]

    page_html = client.get(f"/console/packages/{name}").text
    api = versions(server, name)
    for branch in ("major", "beta"):
        expected = [entry for entry in api if entry["branch"] == branch]
        rows = rows_of(page_html, branch)
        assert [row.split()[0] for row in rows] == [entry["version"] for entry in expected]
        for row, entry in zip(rows, expected, strict=True):
            assert ("released" if entry["released"] else "held") == row.split()[1]
            assert entry["content"]["sha256"] in row
    assert f'<a href="/console/rollouts/{rollout_id}">#{rollout_id}</a>' in page_html
    assert "No device runs it yet." in page_html

    # size, and a download link that serves the very file
    link = f"/otafiles/{name}/major/{name}-major-1.0.0.zip"
    assert f'href="{link}"' in page_html
    data = httpx.get(server.url + link).content
    assert hashlib.sha256(data).hexdigest() == first["sha256"]
    assert f'<data value="{len(data)}">' in page_html

    # Under the rollout, delete is refused with the API's own sentence; aborted, it works.
    refused = client.post(
        f"/console/packages/{name}/major/1.10.0/delete", data={"csrf": token(client), "confirm": "yes"}
    )
    expected_error = api_error(
        httpx.delete(f"{server.url}/api/v1/versions/{name}/major/1.10.0", headers=ADMIN), 409
    )
    assert flash(followed(client, refused)) == expected_error
    assert any(entry["version"] == "1.10.0" for entry in versions(server, name))
    aborted = httpx.post(f"{server.url}/api/v1/rollouts/{rollout_id}/abort", headers=ADMIN)
    assert aborted.status_code == 200, aborted.text
    assert f"/console/rollouts/{rollout_id}" not in client.get(f"/console/packages/{name}").text


def test_unknown_and_invalid_packages_are_error_pages(client: httpx.Client) -> None:
    missing = client.get("/console/packages/no-such-package")
    assert missing.status_code == 404
    assert "no version of no-such-package" in missing.text
    assert client.get("/console/packages/bad%20name").status_code == 400


def test_release_hold_delete_follow_the_apis_rules(
    server: RunningServer, client: httpx.Client, publisher: Publisher, name: str
) -> None:
    publisher.publish(name, "1.0.0")
    publisher.publish(name, "1.1.0", hold=True)
    base = f"/console/packages/{name}/major"

    released = followed(client, client.post(f"{base}/1.1/release", data={"csrf": token(client)}))
    assert flash(released) == f"Released {name} 1.1 (major)"  # 1.1 is 1.1.0, as in the API
    assert latest(server, name) == "1.1.0"
    held = followed(client, client.post(f"{base}/1.1.0/hold", data={"csrf": token(client)}))
    assert flash(held) == f"Held {name} 1.1.0 (major)"
    assert latest(server, name) == "1.0.0"

    # the API's 404 sentence, and a 403 without the session's token (nothing changes)
    missing = followed(client, client.post(f"{base}/9.9/release", data={"csrf": token(client)}))
    assert flash(missing) == api_error(
        httpx.post(f"{server.url}/api/v1/versions/{name}/major/9.9/release", headers=ADMIN), 404
    )
    forged = client.post(f"{base}/1.1.0/release", data={"csrf": "forged"})
    assert forged.status_code == 403
    assert client.post(f"{base}/1.1.0/release").status_code == 403
    assert latest(server, name) == "1.0.0"

    # delete asks for its box to be ticked
    unticked = followed(client, client.post(f"{base}/1.1.0/delete", data={"csrf": token(client)}))
    assert "tick the box" in flash(unticked)
    assert [v["version"] for v in versions(server, name)] == ["1.1.0", "1.0.0"]
    done = client.post(f"{base}/1.1.0/delete", data={"csrf": token(client), "confirm": "yes"})
    assert done.headers["location"] == f"/console/packages/{name}"
    assert flash(client.get(done.headers["location"])) == f"Deleted {name} 1.1.0 (major)"
    assert [v["version"] for v in versions(server, name)] == ["1.0.0"]
    last = client.post(f"{base}/1.0.0/delete", data={"csrf": token(client), "confirm": "yes"})
    assert last.headers["location"] == "/console/packages"  # its page is gone with it
    assert versions(server, name) == []


# -- uploads ------------------------------------------------------------------------------------------


def test_an_upload_lands_held_or_released_and_force_replaces(
    server: RunningServer, client: httpx.Client, name: str
) -> None:
    data = make_zip({"a.txt": b"first\n"})
    done = console_upload(client, content_for(data, name, "1.0.0"), data, csrf=token(client), first=("hold",))
    assert done.headers["location"] == f"/console/packages/{name}"
    assert flash(followed(client, done)) == f"Uploaded {name} 1.0.0 (held)"
    [entry] = versions(server, name)
    assert entry["released"] is False
    assert latest(server, name) is None
    assert httpx.get(f"{server.url}/otafiles/{name}/major/{name}-major-1.0.0.zip").content == data

    # the same version again: refused (before the file is read) with the API's sentence...
    again = make_zip({"a.txt": b"second\n"})
    refused = console_upload(client, content_for(again, name, "1.0"), again, csrf=token(client))
    assert refused.headers["location"] == "/console/packages"
    message = flash(followed(client, refused))
    assert message == api_error(
        httpx.put(
            f"{server.url}/upload",
            files=[("content", (None, json.dumps(content_for(again, name, "1.0")))), ("file", ("z", again))],
            headers={"Authorization": "Bearer test-token"},
        ),
        409,
    )
    # ...and with force it replaces the version, released this time (its own request's flag)
    forced = console_upload(
        client, content_for(again, name, "1.0"), again, csrf=token(client), first=("force",)
    )
    assert flash(followed(client, forced)) == f"Uploaded {name} 1.0"
    [entry] = versions(server, name)
    assert (entry["version"], entry["released"]) == ("1.0", True)
    assert httpx.get(f"{server.url}/otafiles/{name}/major/{name}-major-1.0.zip").content == again
    assert incoming(server) == []


def test_an_upload_without_a_valid_csrf_token_stores_nothing(
    server: RunningServer, client: httpx.Client, name: str
) -> None:
    data = make_zip({"a.txt": b"x" * 200_000})
    content = content_for(data, name, "1.0.0")
    before = objects(server)
    good = token(client)
    for attempt in (
        {"csrf": None},  # no token at all
        {"csrf": "forged"},  # another session's, or made up
        {"csrf": good, "file_first": True},  # the token only after the file
        {"csrf": None, "headers": {"X-CSRF-Token": "forged"}},
    ):
        refused = console_upload(client, content, data, **attempt)  # type: ignore[arg-type]
        assert refused.status_code == 403, (attempt, refused.text)
        assert "CSRF" in refused.text
        assert versions(server, name) == []
        assert incoming(server) == []
        assert objects(server) == before
    # Without a session at all: the login is asked for, nothing stored.
    with httpx.Client(base_url=server.url) as stranger:
        anonymous = console_upload(stranger, content, data, csrf=good)
        assert anonymous.status_code == 401
    assert versions(server, name) == []
    assert incoming(server) == []
    # The header is a valid way to send the token (a script's upload).
    sent = console_upload(client, content, data, csrf=None, headers={"X-CSRF-Token": good})
    assert flash(followed(client, sent)) == f"Uploaded {name} 1.0.0"
    assert [entry["version"] for entry in versions(server, name)] == ["1.0.0"]


def test_a_wrong_sha256_or_a_bad_content_json_is_refused_and_stores_nothing(
    server: RunningServer, client: httpx.Client, name: str
) -> None:
    data = make_zip({"a.txt": b"payload\n"})
    before = objects(server)
    wrong = {**content_for(data, name, "1.0.0"), "sha256": "0" * 64}
    refused = console_upload(client, wrong, data, csrf=token(client))
    assert refused.headers["location"] == "/console/packages"
    message = flash(followed(client, refused))
    assert message.startswith("sha256 mismatch")
    assert hashlib.sha256(data).hexdigest() in message
    bad = {**content_for(data, name, "1.0.0"), "version": "not a version"}
    invalid = flash(followed(client, console_upload(client, bad, data, csrf=token(client))))
    assert "version" in invalid
    missing = client.post(UPLOAD, files=[("csrf", (None, token(client))), ("content", (None, "{}"))])
    assert "content" in flash(followed(client, missing))
    assert versions(server, name) == []
    assert incoming(server) == []
    assert objects(server) == before


# -- the chart ----------------------------------------------------------------------------------------


def test_the_chart_counts_the_devices_that_run_each_version(
    server: RunningServer, client: httpx.Client, publisher: Publisher, name: str
) -> None:
    publisher.publish(name, "1.0.0")
    publisher.publish(name, "1.2.0")
    assert "No device runs it yet." in client.get(f"/console/packages/{name}").text
    fleet = {"1.2.0": 3, "1.0.0": 1, "0.9.0": 2}  # 0.9.0 is no longer on the server: still counted
    for version, n in fleet.items():
        for i in range(n):
            register(server, f"{name}-{version}-{i}", (name, "major", version), ("other", "major", "5"))
    page_html = client.get(f"/console/packages/{name}").text
    assert chart_bars(page_html) == [("1.2.0", 3), ("1.0.0", 1), ("0.9.0", 2)]
    assert f'aria-label="Versions of {name} the fleet runs: 1.2.0: 3 devices; 1.0.0: 1 device' in page_html
    # the API's own view of the same fleet agrees
    for version, n in fleet.items():
        listed = httpx.get(
            f"{server.url}/api/v1/devices", headers=ADMIN, params={"package": name, "version": version}
        )
        assert listed.json()["total"] == n


# -- in a real browser --------------------------------------------------------------------------------


def test_release_hold_and_delete_from_the_buttons(
    server: RunningServer, publisher: Publisher, page: Page, name: str
) -> None:
    from playwright.sync_api import expect

    publisher.publish(name, "1.0.0")
    publisher.publish(name, "1.1.0", hold=True)
    for i, version in enumerate(["1.0.0", "1.0.0", "1.0.0", "0.9.0"]):
        register(server, f"{name}-dev-{i}", (name, "major", version))
    login_page(page, server)
    page.goto(f"{server.url}/console/packages")
    page.get_by_role("link", name=name).first.click()
    expect(page.get_by_role("heading", name=name, exact=True)).to_be_visible()
    expect(page.get_by_role("img", name=f"Versions of {name} the fleet runs")).to_be_visible()
    screenshot(page, "package")

    page.get_by_role("button", name="Release 1.1.0").click()
    expect(page.get_by_role("status")).to_have_text(f"Released {name} 1.1.0 (major)")
    assert latest(server, name) == "1.1.0"

    page.get_by_role("button", name="Hold 1.1.0").click()
    expect(page.get_by_role("status")).to_have_text(f"Held {name} 1.1.0 (major)")
    assert latest(server, name) == "1.0.0"
    expect(page.get_by_role("button", name="Release 1.1.0")).to_be_visible()

    # Delete without the box ticked: the browser does not send the form (the page stays as it was).
    box = page.get_by_label("Yes, delete 1.1.0")
    page.get_by_role("button", name="Delete 1.1.0").click()
    assert box.evaluate("element => element.validity.valueMissing") is True
    expect(page.get_by_role("status")).to_have_text(f"Held {name} 1.1.0 (major)")
    assert [v["version"] for v in versions(server, name)] == ["1.1.0", "1.0.0"]
    box.check()
    page.get_by_role("button", name="Delete 1.1.0").click()
    expect(page.get_by_role("status")).to_have_text(f"Deleted {name} 1.1.0 (major)")
    assert [v["version"] for v in versions(server, name)] == ["1.0.0"]
    expect(page.get_by_role("button", name="Delete 1.1.0")).to_have_count(0)


def test_uploading_from_the_browser(server: RunningServer, page: Page, tmp_path: Path, name: str) -> None:
    from playwright.sync_api import expect

    zip_path, content_path, data = packed(tmp_path / "v1", name, "1.0.0")
    login_page(page, server)
    page.goto(f"{server.url}/console/packages")
    page.get_by_label("content.json").set_input_files(content_path)
    page.get_by_label("Package zip").set_input_files(zip_path)
    page.get_by_label("Upload held (for a staged rollout)").check()
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("status")).to_have_text(f"Uploaded {name} 1.0.0 (held)")
    assert page.url == f"{server.url}/console/packages/{name}"
    expect(page.get_by_role("cell", name="held", exact=True)).to_be_visible()
    [entry] = versions(server, name)
    assert entry["released"] is False
    assert httpx.get(f"{server.url}/otafiles/{name}/major/{name}-major-1.0.0.zip").content == data

    # a second version, released; then one whose content.json does not match its zip
    zip2, content2, data2 = packed(tmp_path / "v2", name, "1.1.0")
    page.goto(f"{server.url}/console/packages")
    page.get_by_label("content.json").set_input_files(content2)
    page.get_by_label("Package zip").set_input_files(zip2)
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("status")).to_have_text(f"Uploaded {name} 1.1.0")
    assert latest(server, name) == "1.1.0"
    assert httpx.get(f"{server.url}/otafiles/{name}/major/{name}-major-1.1.0.zip").content == data2
    page.get_by_role("link", name="Packages", exact=True).first.click()
    expect(page.get_by_role("link", name=name)).to_be_visible()
    screenshot(page, "packages")

    zip3, content3, _ = packed(tmp_path / "v3", name, "1.2.0")
    content3.write_text(json.dumps({**json.loads(content3.read_text()), "sha256": "a" * 64}))
    page.goto(f"{server.url}/console/packages")
    page.get_by_label("content.json").set_input_files(content3)
    page.get_by_label("Package zip").set_input_files(zip3)
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("alert")).to_contain_text("sha256 mismatch")
    assert page.url == f"{server.url}/console/packages"
    assert [v["version"] for v in versions(server, name)] == ["1.1.0", "1.0.0"]
    assert incoming(server) == []

    # the same version again: the API's 409 sentence, shown on the list page
    page.get_by_label("content.json").set_input_files(content2)
    page.get_by_label("Package zip").set_input_files(zip2)
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("alert")).to_contain_text("exists")
    expect(page.get_by_role("link", name=name)).to_be_visible()

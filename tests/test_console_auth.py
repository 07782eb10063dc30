"""The console's sessions and their guards, over HTTP against a real server: login, logout, cookies'
flags, CSRF, the login throttle, every route refused without a session, security headers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from otakit.server.console import MODULES
from tests.console_helpers import OPERATOR, PASSWORD, add_user, console_server, csrf_of, logged_in
from tests.servers import ADMIN_HEADERS, RunningServer, run_server
from tests.test_fleet_e2e import start_rollout


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with console_server(tmp_path_factory.mktemp("console-auth")) as running:
        yield running


def login_form(client: httpx.Client) -> str:
    return csrf_of(client.get("/console/login").text)


def post_login(client: httpx.Client, password: str, **headers: str) -> httpx.Response:
    token = login_form(client)
    return client.post(
        "/console/login",
        data={"username": OPERATOR, "password": password, "csrf": token},
        headers=headers,
    )


def cookie_header(response: httpx.Response, name: str) -> str:
    found = [value for value in response.headers.get_list("set-cookie") if value.startswith(f"{name}=")]
    assert found, f"no {name} cookie set"
    return found[0]


def test_a_wrong_password_is_refused_and_the_right_one_logs_in(server: RunningServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        wrong = post_login(client, "not the password", **{"X-Forwarded-For": "198.51.100.1"})
        assert wrong.status_code == 401
        assert "Wrong username or password" in wrong.text
        assert "otakit_session" not in client.cookies
        assert client.get("/console/").status_code == 303
        right = post_login(client, PASSWORD, **{"X-Forwarded-For": "198.51.100.1"})
        assert right.status_code == 303
        assert right.headers["location"] == "/console/"
        page = client.get("/console/")
        assert page.status_code == 200
        assert OPERATOR in page.text


def test_an_unknown_user_reads_as_a_wrong_password(server: RunningServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        token = login_form(client)
        response = client.post(
            "/console/login",
            data={"username": "nobody", "password": PASSWORD, "csrf": token},
            headers={"X-Forwarded-For": "198.51.100.2"},
        )
    assert response.status_code == 401
    assert "Wrong username or password" in response.text


def test_session_cookies_are_httponly_strict_and_expiring(server: RunningServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        response = post_login(client, PASSWORD)
    cookie = cookie_header(response, "otakit_session").lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert "path=/console" in cookie
    assert re.search(r"max-age=28800\b", cookie)
    assert "secure" not in cookie  # plain http on loopback: a Secure cookie would never come back


def test_cookies_are_secure_behind_https(server: RunningServer) -> None:
    # uvicorn trusts X-Forwarded-Proto from a proxy on loopback, as from nginx in front of it.
    with httpx.Client(base_url=server.url) as client:
        response = post_login(client, PASSWORD, **{"X-Forwarded-Proto": "https"})
    assert response.status_code == 303
    assert "; secure" in cookie_header(response, "otakit_session").lower()


def test_the_login_form_has_its_own_csrf_token(server: RunningServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        client.get("/console/login")
        for token in ("", "forged"):
            response = client.post(
                "/console/login", data={"username": OPERATOR, "password": PASSWORD, "csrf": token}
            )
            assert response.status_code == 403
            assert "otakit_session" not in client.cookies
    with httpx.Client(base_url=server.url) as other:  # a token without its cookie: another browser's
        token = login_form(other)
    with httpx.Client(base_url=server.url) as client:
        response = client.post(
            "/console/login", data={"username": OPERATOR, "password": PASSWORD, "csrf": token}
        )
        assert response.status_code == 403


def test_after_login_the_browser_goes_where_it_was_going_on_this_site_only(server: RunningServer) -> None:
    for target, expected in (
        ("/console/devices?tag=x", "/console/devices?tag=x"),
        ("//evil.example/console/", "/console/"),
        ("https://evil.example/", "/console/"),
        ("/console//evil.example", "/console/"),
    ):
        with httpx.Client(base_url=server.url) as client:
            token = login_form(client)
            response = client.post(
                "/console/login",
                data={"username": OPERATOR, "password": PASSWORD, "csrf": token, "next": target},
            )
            assert response.headers["location"] == expected


def test_logout_ends_the_session_on_the_server(server: RunningServer) -> None:
    client = logged_in(server)
    try:
        stolen = client.cookies["otakit_session"]
        page = client.get("/console/")
        without_token = client.post("/console/logout", data={})
        assert without_token.status_code == 403  # a logout is a change: CSRF applies
        assert client.get("/console/").status_code == 200
        response = client.post("/console/logout", data={"csrf": csrf_of(page.text)})
        assert response.status_code == 303
        assert response.headers["location"] == "/console/login"
    finally:
        client.close()
    with httpx.Client(base_url=server.url, cookies={"otakit_session": stolen}) as replay:
        again = replay.get("/console/")
        assert again.status_code == 303  # the old cookie opens nothing
        assert again.headers["location"].startswith("/console/login")


def test_forged_and_foreign_cookies_open_nothing(server: RunningServer) -> None:
    client = logged_in(server)
    try:
        real = client.cookies["otakit_session"]
    finally:
        client.close()
    session_id, _, signature = real.partition(".")
    forged = [
        "",
        "garbage",
        session_id,  # unsigned
        f"{session_id}x.{signature}",  # the signature does not cover it
        real[:-2] + ("AA" if not real.endswith("AA") else "BB"),
    ]
    for cookie in forged:
        with httpx.Client(base_url=server.url, cookies={"otakit_session": cookie}) as client:
            assert client.get("/console/").status_code == 303, cookie


def test_forms_without_a_valid_csrf_token_change_nothing(server: RunningServer) -> None:
    add_user(_database_of(server), "victim", "victim-password")
    client = logged_in(server)
    try:
        page = client.get("/console/users")
        assert "victim" in page.text
        for data, headers in (
            ({}, {}),
            ({"csrf": "forged"}, {}),
            ({}, {"X-CSRF-Token": "forged"}),
        ):
            response = client.post("/console/users/victim/delete", data=data, headers=headers)
            assert response.status_code == 403
            assert "CSRF" in response.text
        # A valid token from a foreign page's form: the browser says where it came from.
        foreign = client.post(
            "/console/users/victim/delete",
            data={"csrf": csrf_of(page.text)},
            headers={"Origin": "https://evil.example"},
        )
        assert foreign.status_code == 403
        assert "Delete victim" in client.get("/console/users").text
        done = client.post("/console/users/victim/delete", data={"csrf": csrf_of(page.text)})
        assert done.status_code == 303
        after = client.get("/console/users").text
        assert "Deleted user victim." in after
        assert "Delete victim" not in after
    finally:
        client.close()


def _database_of(server: RunningServer) -> str:
    return f"sqlite:///{server.files_dir.parent / 'ota.db'}"


def test_failed_logins_are_throttled_per_address(server: RunningServer) -> None:
    address = {"X-Forwarded-For": "203.0.113.7"}
    with httpx.Client(base_url=server.url) as client:
        for _ in range(10):
            assert post_login(client, "wrong password", **address).status_code == 401
        throttled = post_login(client, PASSWORD, **address)  # even the right password now
        assert throttled.status_code == 429
        assert "too many failed logins" in throttled.text
        assert "otakit_session" not in client.cookies
        elsewhere = post_login(client, PASSWORD, **{"X-Forwarded-For": "203.0.113.8"})
        assert elsewhere.status_code == 303  # another address is not slowed


def test_a_form_body_is_bounded(server: RunningServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        token = login_form(client)
        response = client.post(
            "/console/login",
            data={"username": OPERATOR, "password": "x" * 70_000, "csrf": token},
        )
    assert response.status_code == 413


def test_pages_carry_a_strict_content_security_policy(server: RunningServer) -> None:
    client = logged_in(server)
    try:
        for path in ("/console/login", "/console/", "/console/users"):
            response = client.get(path)
            policy = response.headers["content-security-policy"]
            assert "script-src 'self'" in policy
            assert "default-src 'none'" in policy
            assert "frame-ancestors 'none'" in policy
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["cache-control"] == "no-store"
            assert "<script>" not in response.text  # no inline script anywhere
            assert ' style="' not in response.text
    finally:
        client.close()


# -- every console route, without a session -------------------------------------------------------------

_SAMPLES = {"package": "app", "branch": "major", "version": "2.0", "device_id": "dev-1", "rollout_id": "1"}


def console_routes() -> list[tuple[str, str]]:
    """Every console route (method, path with sample values) but the login page and static files."""
    found = []
    for route in [route for module in MODULES for route in module.router.routes]:
        if not isinstance(route, APIRoute) or not route.path.startswith("/console/"):
            continue
        if route.path == "/console/login":
            continue
        path = re.sub(r"\{(\w+)\}", lambda m: _SAMPLES.get(m.group(1), OPERATOR), route.path)
        found.extend((method, path) for method in sorted(route.methods))
    return found


def test_the_route_list_covers_every_area() -> None:
    paths = {path for _, path in console_routes()}
    for area in ("/console/", "/console/packages", "/console/devices", "/console/rollouts", "/console/users"):
        assert area in paths
    assert ("POST", "/console/packages/upload") in console_routes()


@pytest.fixture(scope="module")
def fleet(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Something for each route to change: a held version under a rollout, a released one, a device."""
    from tests.daemon_packages import Publisher

    publisher = Publisher(server, tmp_path_factory.mktemp("publisher"))
    try:
        publisher.publish("app", "1.0")
        publisher.publish("app", "2.0", hold=True)
    finally:
        publisher.close()
    rollout = start_rollout(server, "app", "2.0", phases=[50, 100])
    enrolled = httpx.post(
        f"{server.url}/api/v1/devices/register",
        headers={"Authorization": "Bearer enroll-token"},
        json={"device": "dev-1", "packages": [{"package": "app", "branch": "major", "version": "1.0"}]},
    )
    assert enrolled.status_code == 200, enrolled.text
    return {"rollout": rollout}


def snapshot(server: RunningServer) -> dict[str, Any]:
    with httpx.Client(base_url=server.url, headers=ADMIN_HEADERS) as admin:
        return {
            "versions": admin.get("/getVersion", params={"package": "app"}).json(),
            "device": {
                k: v
                for k, v in admin.get("/api/v1/devices/dev-1").json()["device"].items()
                if k != "last_seen"
            },
            "rollout": {
                k: v for k, v in admin.get("/api/v1/rollouts/1").json()["rollout"].items() if k != "updated"
            },
        }


def test_every_console_route_is_refused_without_a_session(
    server: RunningServer, fleet: dict[str, Any]
) -> None:
    before = snapshot(server)
    routes = console_routes()
    assert len(routes) > 15
    with httpx.Client(base_url=server.url) as client:
        for method, path in routes:
            response = client.request(
                method, path, data={"csrf": "x", "confirm": "yes"} if method == "POST" else None
            )
            if method == "GET":
                assert response.status_code == 303, (method, path)
                assert response.headers["location"].startswith("/console/login?next="), (method, path)
            else:
                assert response.status_code == 401, (method, path, response.status_code)
            assert "dev-1" not in response.text
    assert snapshot(server) == before


def test_sessions_survive_a_restart_and_are_shared_by_servers(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'ota.db'}"
    for folder in ("first", "second", "third"):
        (tmp_path / folder).mkdir()
    with console_server(tmp_path / "first", database) as first:
        client = logged_in(first)
        cookie = client.cookies["otakit_session"]
        client.close()
        with (
            run_server(tmp_path / "second", database, env={"OTAKIT_ADMIN_TOKENS": "t"}) as second,
            httpx.Client(base_url=second.url, cookies={"otakit_session": cookie}) as other,
        ):
            assert other.get("/console/").status_code == 200  # the generated key is the database's
    with (
        run_server(tmp_path / "third", database) as restarted,
        httpx.Client(base_url=restarted.url, cookies={"otakit_session": cookie}) as again,
    ):
        assert again.get("/console/").status_code == 200


def test_a_configured_secret_signs_the_sessions(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'ota.db'}"
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    with console_server(tmp_path / "a", database, env={"OTAKIT_CONSOLE_SECRET": "a" * 40}) as server:
        client = logged_in(server)
        cookie = client.cookies["otakit_session"]
        client.close()
    with (
        run_server(tmp_path / "b", database, env={"OTAKIT_CONSOLE_SECRET": "b" * 40}) as other_key,
        httpx.Client(base_url=other_key.url, cookies={"otakit_session": cookie}) as client,
    ):
        assert client.get("/console/").status_code == 303  # another key: the cookie is not ours

"""The server's HTTP contract, against a real uvicorn on loopback, on SQLite and on MariaDB."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.routing import iter_route_contexts

from otakit.names import NAME_PATTERN
from otakit.server.app import create_app
from otakit.server.settings import ServerSettings
from tests.api_client import assert_error, upload
from tests.samples import LEGACY, content_for, make_zip
from tests.servers import RunningServer


def _ok(response: httpx.Response) -> dict[str, object]:
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    assert body["status"] == 200
    return body


def _publish(
    server: RunningServer, package: str, version: str, branch: str = "major", **extra: object
) -> bytes:
    data = make_zip({"app.txt": f"{package} {version} {branch}".encode()})
    _ok(upload(server, content_for(data, package, version, branch, **extra), data))
    return data


def _file_url(package: str, branch: str, version: str, alias: str = "otafiles") -> str:
    return f"/{alias}/{package}/{branch}/{package}-{branch}-{version}.zip"


def _listing(directory: os.PathLike[str]) -> list[str]:
    return sorted(os.listdir(directory))


def test_test_and_healthz(server: RunningServer) -> None:
    with server.client() as client:
        assert client.get("/test").json() == {"status": 200}
        assert client.get("/healthz").json() == {"status": 200}
        assert client.get("/docs").status_code == 200
        assert "/upload" in client.get("/openapi.json").json()["paths"]


def test_legacy_package_round_trip(server: RunningServer) -> None:
    """The original project's package and content.json publish and come back byte-identical."""
    data = (LEGACY / "test.zip").read_bytes()
    raw = json.loads((LEGACY / "test.json").read_bytes())
    raw["package"] = "legacy-" + server.url.rsplit(":", 1)[1]
    _ok(upload(server, raw, data))
    with server.client() as client:
        latest = _ok(client.get("/latestVersion", params={"package": raw["package"], "branch": "test"}))
        assert latest["content.json"] == raw  # every value exactly as uploaded, `restore` included
        assert list(latest["content.json"]) == list(raw)  # type: ignore[arg-type]
        got = client.get(_file_url(raw["package"], "test", "0.0.1"))
        assert got.status_code == 200
        assert got.content == data
        assert got.headers["etag"] == f'"{raw["sha256"]}"'
        assert got.headers["content-length"] == str(len(data))
        assert got.headers["accept-ranges"] == "bytes"
        assert client.get(_file_url(raw["package"], "test", "0.0.1", "ota-files")).content == data


def test_latest_is_the_highest_version_not_the_newest_upload(server: RunningServer, pkg: str) -> None:
    for version in ["0.0.9", "0.0.10", "0.0.2", "0.1.0rc1"]:
        _publish(server, pkg, version)
    _publish(server, pkg, "5.0.0", branch="beta")
    with server.client() as client:
        latest = _ok(client.get("/latestVersion", params={"package": pkg, "branch": "major"}))
        assert latest["content.json"]["version"] == "0.1.0rc1"  # type: ignore[index]
        _publish(server, pkg, "0.1.0")
        latest = _ok(client.get("/latestVersion", params={"package": pkg, "branch": "major"}))
        assert latest["content.json"]["version"] == "0.1.0"  # type: ignore[index]


def test_get_version_lists_highest_first_and_filters(server: RunningServer, pkg: str) -> None:
    for version, branch in [("0.0.9", "major"), ("0.0.10", "major"), ("1.0.0", "beta")]:
        _publish(server, pkg, version, branch)
    with server.client() as client:
        listed = _ok(client.get("/getVersion", params={"package": pkg}))["list"]
        assert [(e["version"], e["branch"]) for e in listed] == [  # type: ignore[union-attr]
            ("1.0.0", "beta"), ("0.0.10", "major"), ("0.0.9", "major"),
        ]  # fmt: skip
        entry = listed[0]  # type: ignore[index]
        assert set(entry) == {"name", "branch", "version", "content", "released"}
        assert entry["released"] is True
        assert entry["name"] == pkg
        assert entry["content"]["version"] == "1.0.0"
        only_major = _ok(client.get("/getVersion", params={"package": pkg, "branch": "major"}))["list"]
        assert [e["version"] for e in only_major] == ["0.0.10", "0.0.9"]  # type: ignore[union-attr]
        one = _ok(client.get("/getVersion", params={"package": pkg, "version": "0.0.9"}))["list"]
        assert [e["version"] for e in one] == ["0.0.9"]  # type: ignore[union-attr]
        assert_error(client.get("/getVersion", params={"package": pkg, "branch": "nope"}), 404)
        assert_error(client.get("/getVersion", params={"package": pkg, "version": "9.9"}), 404)
        assert_error(client.get("/getVersion", params={"package": "unknown-" + pkg}), 404)


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/latestVersion", {}),
        ("/latestVersion", {"package": "x"}),
        ("/latestVersion", {"branch": "major"}),
        ("/latestVersion", {"package": "..", "branch": "major"}),
        ("/latestVersion", {"package": "a/b", "branch": "major"}),
        ("/latestVersion", {"package": "a", "branch": "../x"}),
        ("/latestVersion", {"package": "a\x00", "branch": "major"}),
        ("/latestVersion", {"package": "", "branch": "major"}),
        ("/getVersion", {}),
        ("/getVersion", {"package": "../../etc"}),
        ("/getVersion", {"package": "a", "branch": "b/c"}),
        ("/getVersion", {"package": "a", "version": "not a version"}),
    ],
)
def test_bad_parameters_are_400_not_422(server: RunningServer, path: str, params: dict[str, str]) -> None:
    with server.client() as client:
        assert_error(client.get(path, params=params), 400)


def test_unknown_routes_answer_in_the_convention(server: RunningServer) -> None:
    with server.client() as client:
        assert_error(client.get("/nope"), 404)
        assert_error(client.post("/latestVersion"), 405)
        assert_error(client.get("/latestVersion", params={"package": "none-such", "branch": "major"}), 404)


def test_latest_version_is_one_route(tmp_path: Path) -> None:
    settings = ServerSettings(database_url=f"sqlite:///{tmp_path / 'ota.db'}", files_dir=tmp_path / "files")
    paths = [route.path for route in iter_route_contexts(create_app(settings).routes)]
    assert paths.count("/latestVersion") == 1


def test_names_are_documented_as_they_are_checked(server: RunningServer) -> None:
    with server.client() as client:
        paths = client.get("/openapi.json").json()["paths"]
    latest = {p["name"]: p for p in paths["/latestVersion"]["get"]["parameters"] if p["in"] == "query"}
    listed = {p["name"]: p for p in paths["/getVersion"]["get"]["parameters"]}
    for parameter in (latest["package"], latest["branch"], listed["package"], listed["branch"]):
        assert parameter["schema"]["maxLength"] == 100
        assert parameter["schema"]["pattern"] == NAME_PATTERN
    assert latest["package"]["required"] is True
    assert latest["branch"]["required"] is True
    assert set(paths["/latestVersion"]["get"]["responses"]) >= {"200", "304", "400", "404"}


@pytest.mark.parametrize("path", ["/latestVersion", "/getVersion"])
def test_a_name_over_100_characters_is_a_400(server: RunningServer, path: str) -> None:
    with server.client() as client:
        too_long = client.get(path, params={"package": "p" * 101, "branch": "major"})
        assert "at most 100 characters" in assert_error(too_long, 400)
        assert_error(client.get(path, params={"package": "p" * 100, "branch": "major"}), 404)


def test_latest_version_etag_and_304(server: RunningServer, pkg: str) -> None:
    _publish(server, pkg, "1.0.0")
    params = {"package": pkg, "branch": "major"}
    with server.client() as client:
        first = client.get("/latestVersion", params=params)
        etag = first.headers["etag"]
        again = client.get("/latestVersion", params=params, headers={"If-None-Match": etag})
        assert again.status_code == 304
        assert again.content == b""
        _publish(server, pkg, "1.0.1")
        changed = client.get("/latestVersion", params=params, headers={"If-None-Match": etag})
        assert changed.status_code == 200
        assert changed.headers["etag"] != etag
        assert changed.json()["content.json"]["version"] == "1.0.1"


def test_file_range_304_and_head(server: RunningServer, pkg: str) -> None:
    data = _publish(server, pkg, "2.0.0")
    url = _file_url(pkg, "major", "2.0.0")
    with server.client() as client:
        part = client.get(url, headers={"Range": "bytes=10-29"})
        assert part.status_code == 206
        assert part.content == data[10:30]
        assert part.headers["content-range"] == f"bytes 10-29/{len(data)}"
        tail = client.get(url, headers={"Range": f"bytes={len(data) - 5}-"})
        assert tail.status_code == 206
        assert tail.content == data[-5:]
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        cached = client.get(url, headers={"If-None-Match": etag})
        assert cached.status_code == 304
        assert cached.headers["etag"] == etag
        head = client.head(url)
        assert head.status_code == 200
        assert head.headers["content-length"] == str(len(data))
        assert head.content == b""
        assert client.get(url, headers={"Range": f"bytes={len(data) + 10}-"}).status_code == 416


@pytest.mark.parametrize(
    "path",
    [
        "/otafiles/..%2F..%2Fetc/major/x.zip",
        "/otafiles/%2e%2e/major/..-major-1.0.zip",
        "/otafiles/pkg/major/pkg-major-1.0.zip/extra",
        "/otafiles/pkg/major",
        "/otafiles/pkg/ma%00jor/pkg-ma%00jor-1.0.zip",
        "/otafiles/pkg/major/other-major-1.0.zip",
        "/otafiles/pkg/major/pkg-major-..%2F..%2Fsecret.zip",
        "/otafiles/pkg/major/pkg-major-1.0.tar",
        "/ota-files/pkg/major/pkg-major-not%20a%20version.zip",
    ],
)
def test_file_route_refuses_names_that_are_not_names(server: RunningServer, path: str) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        # A raw request: an HTTP client would normalise the dots away before the server saw them.
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line.split()[1] == b"400", reply
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["status"] == 400


def test_unknown_file_is_a_json_404(server: RunningServer, pkg: str) -> None:
    _publish(server, pkg, "1.0")
    with server.client() as client:
        assert_error(client.get(_file_url(pkg, "major", "9.9.9")), 404)
        assert_error(client.get(_file_url(pkg, "beta", "1.0")), 404)
        assert_error(client.get(_file_url(pkg, "major", "1.0.0")), 404)  # stored as written: 1.0


def test_upload_refuses_a_wrong_hash_and_keeps_nothing(server: RunningServer, pkg: str) -> None:
    data = make_zip()
    content = content_for(data + b"tampered", pkg, "1.0.0")
    message = assert_error(upload(server, content, data), 400)
    assert "sha256" in message
    with server.client() as client:
        assert_error(client.get("/latestVersion", params={"package": pkg, "branch": "major"}), 404)
    assert not (server.files_dir / pkg).exists()
    assert _listing(server.files_dir / ".incoming") == []


def test_upload_accepts_upper_case_sha256(server: RunningServer, pkg: str) -> None:
    data = make_zip()
    content = content_for(data, pkg, "1.0.0")
    content["sha256"] = content["sha256"].upper()
    _ok(upload(server, content, data))
    with server.client() as client:
        latest = _ok(client.get("/latestVersion", params={"package": pkg, "branch": "major"}))
        assert latest["content.json"]["sha256"] == content["sha256"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda c: "{not json", "not valid JSON"),
        (lambda c: "[1, 2]", "JSON object"),
        (lambda c: {**c, "package": "../evil"}, "invalid package"),
        (lambda c: {**c, "package": "a/b"}, "invalid package"),
        (lambda c: {**c, "branch": ".."}, "invalid branch"),
        (lambda c: {**c, "version": "1.0/../../x"}, "invalid version"),
        (lambda c: {**c, "version": "latest"}, "invalid version"),
        (lambda c: {k: v for k, v in c.items() if k != "sha256"}, "sha256 is required"),
        (lambda c: {**c, "sha256": "xyz"}, "sha256"),
        (lambda c: {**c, "dependencies": {"x": "=>1"}}, "requirement"),
    ],
)
def test_upload_refuses_invalid_content(
    server: RunningServer, pkg: str, mutate: object, fragment: str
) -> None:
    data = make_zip()
    content = mutate(content_for(data, pkg, "1.0.0"))  # type: ignore[operator]
    assert fragment in assert_error(upload(server, content, data), 400)
    assert _listing(server.files_dir / ".incoming") == []


def test_upload_missing_parts_and_wrong_body(server: RunningServer, pkg: str) -> None:
    data = make_zip()
    content = content_for(data, pkg, "1.0.0")
    assert "'file'" in assert_error(upload(server, content, None), 400)
    assert "'content'" in assert_error(upload(server, None, data), 400)
    with server.client() as client:
        headers = {"Authorization": "Bearer test-token"}
        assert "multipart" in assert_error(client.put("/upload", content=b"raw bytes", headers=headers), 400)
        assert "multipart" in assert_error(client.put("/upload", json=content, headers=headers), 400)
        broken = client.put(
            "/upload",
            content=b'--xyz\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc',
            headers={**headers, "Content-Type": "multipart/form-data; boundary=xyz"},
        )
        assert_error(broken, 400)
    assert _listing(server.files_dir / ".incoming") == []


def test_upload_token(server: RunningServer, pkg: str) -> None:
    data = make_zip()
    content = content_for(data, pkg, "1.0.0")
    response = upload(server, content, data, token=None)
    assert "Authorization: Bearer <token>" in assert_error(response, 401)  # the advice for curl users
    assert response.headers["www-authenticate"] == "Bearer"
    assert_error(upload(server, content, data, token="wrong"), 401)
    _ok(upload(server, content, data, token="second-token"))  # every configured token works


def test_content_first_or_file_first_and_content_as_file(server: RunningServer, pkg: str) -> None:
    for version, kwargs in [
        ("1.0.0", {}),
        ("1.0.1", {"file_first": True}),
        ("1.0.2", {"content_as_file": True}),
    ]:
        data = make_zip({"v": version.encode()})
        _ok(upload(server, content_for(data, pkg, version), data, **kwargs))  # type: ignore[arg-type]
    with server.client() as client:
        assert len(_ok(client.get("/getVersion", params={"package": pkg}))["list"]) == 3  # type: ignore[arg-type]


def test_existing_version_is_409_without_force(server: RunningServer, pkg: str) -> None:
    data = _publish(server, pkg, "1.0")
    other = make_zip({"other": b"bytes"})
    for version in ["1.0", "1.0.0"]:  # the same version, however written
        for file_first in (False, True):
            response = upload(server, content_for(other, pkg, version), other, file_first=file_first)
            assert "exists" in assert_error(response, 409)
    with server.client() as client:
        assert client.get(_file_url(pkg, "major", "1.0")).content == data
    assert _listing(server.files_dir / ".incoming") == []


def test_force_and_overwrite_replace_row_and_file(server: RunningServer, pkg: str) -> None:
    _publish(server, pkg, "1.0")
    for flag, version in [("force", "1.0"), ("overwrite", "1.0.0")]:
        data = make_zip({"new": flag.encode()})
        _ok(upload(server, content_for(data, pkg, version, updateInfo=flag), data, params={flag: "1"}))
        with server.client() as client:
            latest = _ok(client.get("/latestVersion", params={"package": pkg, "branch": "major"}))
            assert latest["content.json"]["updateInfo"] == flag  # type: ignore[index]
            assert latest["content.json"]["version"] == version  # type: ignore[index]
            assert client.get(_file_url(pkg, "major", version)).content == data
            listed = _ok(client.get("/getVersion", params={"package": pkg}))["list"]
            assert len(listed) == 1  # type: ignore[arg-type]
        layout = server.files_dir / pkg / "major"
        assert _listing(layout) == [f"{pkg}-major-{version}.zip"]  # 1.0 replaced by 1.0.0: one file
        assert (layout / f"{pkg}-major-{version}.zip").read_bytes() == data
    with server.client() as client:
        assert_error(client.get(_file_url(pkg, "major", "1.0")), 404)
    objects = _listing(server.files_dir / ".objects")
    with server.client() as client:
        total = sum(len(e["list"]) for e in [client.get("/getVersion", params={"package": p}).json()
                                             for p in [pkg]])  # fmt: skip
    assert total == 1
    assert len(objects) >= 1


def test_stored_files_are_world_readable(server: RunningServer, pkg: str) -> None:
    _publish(server, pkg, "3.0.0")
    path = server.files_dir / pkg / "major" / f"{pkg}-major-3.0.0.zip"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_non_ascii_content_round_trips(server: RunningServer, pkg: str) -> None:
    data = make_zip()
    content = content_for(data, pkg, "1.0.0", description="描述 — ünïcödé", extra={"nested": [1, 2.5, None]})
    _ok(upload(server, content, data))
    with server.client() as client:
        latest = _ok(client.get("/latestVersion", params={"package": pkg, "branch": "major"}))
        assert latest["content.json"] == content


def test_concurrent_uploads_of_one_version_one_wins(server: RunningServer, pkg: str) -> None:
    results: list[int] = []
    payloads = [make_zip({"n": str(i).encode() * 50_000}) for i in range(6)]

    def send(data: bytes) -> None:
        results.append(upload(server, content_for(data, pkg, "1.0.0"), data).status_code)

    threads = [threading.Thread(target=send, args=(data,)) for data in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [200] + [409] * 5
    with server.client() as client:
        latest = _ok(client.get("/latestVersion", params={"package": pkg, "branch": "major"}))
        got = client.get(_file_url(pkg, "major", "1.0.0")).content
    assert hashlib.sha256(got).hexdigest() == latest["content.json"]["sha256"]  # type: ignore[index]


def test_concurrent_forced_uploads_last_commit_wins_whole(server: RunningServer, pkg: str) -> None:
    results: list[int] = []
    payloads = [make_zip({"n": str(i).encode() * 50_000}) for i in range(6)]

    def send(data: bytes) -> None:
        response = upload(server, content_for(data, pkg, "1.0.0"), data, params={"force": "1"})
        results.append(response.status_code)

    threads = [threading.Thread(target=send, args=(data,)) for data in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 6
    with server.client() as client:
        latest = _ok(client.get("/latestVersion", params={"package": pkg, "branch": "major"}))
        got = client.get(_file_url(pkg, "major", "1.0.0")).content
    assert got in payloads
    assert hashlib.sha256(got).hexdigest() == latest["content.json"]["sha256"]  # type: ignore[index]
    on_disk = (server.files_dir / pkg / "major" / f"{pkg}-major-1.0.0.zip").read_bytes()
    assert on_disk == got


def test_content_first_duplicate_is_refused_before_the_file_is_read(server: RunningServer, pkg: str) -> None:
    """With content first, a 409 comes back while most of a large file is still unsent."""
    data = _publish(server, pkg, "1.0.0")
    content = json.dumps(content_for(data, pkg, "1.0.0")).encode()
    boundary = b"otakitboundary"
    announced = 200 * 1024 * 1024
    head = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="content"\r\n\r\n' + content + b"\r\n"
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="a.zip"\r\n\r\n'
    )
    request = (
        b"PUT /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-token\r\n"
        b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\n"
        b"Content-Length: " + str(len(head) + announced).encode() + b"\r\n\r\n" + head
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(request + b"\0" * 65536)  # a little of the file, then wait for the answer
        sock.settimeout(20)
        reply = sock.recv(65536)
    assert reply.split(b"\r\n", 1)[0].split()[1] == b"409", reply


def test_oversized_upload_is_413(tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.servers import run_server

    workdir = tmp_path_factory.mktemp("small-limit")
    with run_server(
        workdir, f"sqlite:///{workdir / 'db.sqlite'}", env={"OTAKIT_MAX_UPLOAD_BYTES": "100000"}
    ) as srv:
        small = make_zip({"a": b"x" * 1000})
        _ok(upload(srv, content_for(small, "small", "1.0"), small))
        big = os.urandom(150_000)
        # Declared too large: refused before the body is read.
        assert_error(upload(srv, content_for(big, "big", "1.0"), big), 413)
        # Not declared (chunked): refused while streaming, nothing kept.
        body = _multipart_chunks(json.dumps(content_for(big, "big", "1.1")).encode(), big)
        with srv.client() as client:
            response = client.put(
                "/upload",
                content=body,
                headers={"Authorization": "Bearer test-token",
                         "Content-Type": "multipart/form-data; boundary=b0undary"},
            )  # fmt: skip
        assert_error(response, 413)
        assert _listing(srv.files_dir / ".incoming") == []
        assert not (srv.files_dir / "big").exists()


def _multipart_chunks(content: bytes, data: bytes, chunk: int = 16384):  # type: ignore[no-untyped-def]
    yield b'--b0undary\r\nContent-Disposition: form-data; name="content"\r\n\r\n' + content + b"\r\n"
    yield b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="p.zip"\r\n\r\n'
    for start in range(0, len(data), chunk):
        yield data[start : start + chunk]
        time.sleep(0)
    yield b"\r\n--b0undary--\r\n"

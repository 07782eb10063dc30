"""A device with trusted_keys installs only what its publishers signed (real server, real daemon)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from otakit.signing import generate_private_key, public_key_line, sign_content
from tests.api_client import upload
from tests.daemons import RunningDaemon, run_daemon, write_config
from tests.samples import content_for, make_zip
from tests.servers import RunningServer

PUBLISHER = generate_private_key()
ROTATED = generate_private_key()
STRANGER = generate_private_key()


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    """One device for the module: every test uses packages of its own."""
    keys = [public_key_line(PUBLISHER), public_key_line(ROTATED)]
    with run_daemon(write_config(tmp_path_factory.mktemp("device"), trusted_keys=keys)) as daemon:
        yield daemon


def publish(
    sqlite_server: RunningServer,
    name: str,
    version: str,
    key: Ed25519PrivateKey | None,
    *,
    tamper: dict[str, Any] | None = None,
    data: bytes | None = None,
    **extra: Any,
) -> bytes:
    data = data or make_zip({"app.txt": f"{name} {version}".encode()})
    content = content_for(data, name, version, remote=sqlite_server.url, local=f"./apps/{name}", **extra)
    if key is not None:
        content = sign_content(content, key)
    content.update(tamper or {})
    assert upload(sqlite_server, content, data).status_code == 200
    return data


def install(device: RunningDaemon, sqlite_server: RunningServer, name: str) -> dict[str, Any]:
    with device.client() as client:
        response = client.post(
            "/packages",
            json={"package": name, "branch": "major", "remote": sqlite_server.url, "local": f"./apps/{name}"},
        )
    assert response.status_code == 202, response.text
    return device.wait_job(response.json()["job"]["id"])


def test_signed_package_installs(sqlite_server: RunningServer, device: RunningDaemon, pkg: str) -> None:
    publish(sqlite_server, pkg, "1.0", PUBLISHER)
    job = install(device, sqlite_server, pkg)
    assert job["state"] == "succeeded", job
    assert any("signature verified" in line for line in job["log"])
    assert (device.folder / "apps" / pkg / "app.txt").read_text() == f"{pkg} 1.0"


def test_a_rotated_key_is_trusted_too(sqlite_server: RunningServer, device: RunningDaemon, pkg: str) -> None:
    publish(sqlite_server, pkg, "1.0", ROTATED)
    assert install(device, sqlite_server, pkg)["state"] == "succeeded"


@pytest.mark.parametrize(
    ("key", "message"), [(None, "not signed"), (STRANGER, "does not trust")], ids=["unsigned", "foreign-key"]
)
def test_unsigned_or_foreign_packages_are_refused(
    sqlite_server: RunningServer, device: RunningDaemon, pkg: str, key: Ed25519PrivateKey | None, message: str
) -> None:
    marker = device.folder / f"{pkg}-hook-ran"
    publish(sqlite_server, pkg, "1.0", key, BeforeUpdate=f"touch {marker}")
    job = install(device, sqlite_server, pkg)
    assert job["state"] == "failed"
    assert message in job["error"]
    assert not marker.exists()
    assert not (device.folder / "apps" / pkg).exists()
    assert device.installed(pkg) is None


@pytest.mark.parametrize(
    "tamper",
    [
        {"BeforeUpdate": "touch {marker}"},
        {"AfterUpdate": "touch {marker}"},
        {"local": "/tmp/elsewhere"},
        {"dependencies": {"other": ">=0"}},
        {"description": "changed"},
    ],
)
def test_tampered_content_is_refused_before_any_hook(
    sqlite_server: RunningServer, device: RunningDaemon, pkg: str, tamper: dict[str, Any]
) -> None:
    marker = device.folder / f"{pkg}-pwned"
    changed = {k: v.format(marker=marker) if isinstance(v, str) else v for k, v in tamper.items()}
    publish(sqlite_server, pkg, "1.0", PUBLISHER, tamper=changed)
    job = install(device, sqlite_server, pkg)
    assert job["state"] == "failed"
    assert "does not match" in job["error"]
    assert not marker.exists()
    assert device.installed(pkg) is None


def test_a_zip_that_is_not_the_signed_one_is_refused(
    sqlite_server: RunningServer, device: RunningDaemon, pkg: str
) -> None:
    signed_for = make_zip({"good.txt": b"good"})
    evil = make_zip({"evil.txt": b"evil"})
    content = sign_content(content_for(signed_for, pkg, "1.0", remote=sqlite_server.url), PUBLISHER)
    # A compromised server swaps the file and fixes up sha256 to match it: the signature then fails.
    content["sha256"] = hashlib.sha256(evil).hexdigest()
    assert upload(sqlite_server, content, evil).status_code == 200
    job = install(device, sqlite_server, pkg)
    assert job["state"] == "failed"
    assert "does not match" in job["error"]
    assert not (device.folder / "apps" / pkg).exists()


def test_an_unsigned_dependency_is_refused(
    sqlite_server: RunningServer, device: RunningDaemon, pkg: str
) -> None:
    dep = f"{pkg}-base"
    publish(sqlite_server, dep, "1.0", None)
    publish(sqlite_server, pkg, "1.0", PUBLISHER, dependencies={dep: ">=1.0"})
    job = install(device, sqlite_server, pkg)
    assert job["state"] == "failed"
    assert "not signed" in job["error"]
    assert device.installed(dep) is None
    assert device.installed(pkg) is None
    publish(sqlite_server, dep, "1.1", PUBLISHER)  # once the dependency is signed, both install
    assert install(device, sqlite_server, pkg)["state"] == "succeeded"
    assert device.installed(dep)["version"] == "1.1"  # type: ignore[index]


def test_no_downgrade_without_being_told(
    sqlite_server: RunningServer, device: RunningDaemon, pkg: str
) -> None:
    publish(sqlite_server, pkg, "2.0", PUBLISHER)
    assert install(device, sqlite_server, pkg)["state"] == "succeeded"
    publish(sqlite_server, pkg, "1.0", PUBLISHER)
    with device.client() as client:
        refused = client.post(f"/packages/{pkg}/update", json={"version": "1.0"})
        assert refused.status_code == 400
        assert "downgrade" in refused.json()["error"]
        allowed = client.post(f"/packages/{pkg}/update", json={"version": "1.0", "allow_downgrade": True})
    assert device.wait_job(allowed.json()["job"]["id"])["state"] == "succeeded"
    assert device.installed(pkg)["version"] == "1.0"  # type: ignore[index]


def test_without_trusted_keys_unsigned_packages_install(
    sqlite_server: RunningServer, tmp_path: Path, pkg: str
) -> None:
    publish(sqlite_server, pkg, "1.0", None)
    with run_daemon(write_config(tmp_path / "open-device")) as daemon:
        assert install(daemon, sqlite_server, pkg)["state"] == "succeeded"
        assert "signatures are not verified" in daemon.log_text()

"""Offline bundles end to end: ``otakit bundle create`` from local files, a real daemon that never
reaches a server, ``otakit-daemon install-bundle`` and ``POST /bundles``, with the checks of an online
install: signatures and trusted keys, sha256, dependency order, hooks, no downgrade."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from otakit.pack import PackResult, pack
from otakit.signing import generate_private_key, public_key_line
from tests.daemon_api import Api, running
from tests.daemon_packages import hook, read_hooks
from tests.daemons import TOKEN, write_config
from tests.samples import write_files

PUBLISHER = generate_private_key()
STRANGER = generate_private_key()
NOWHERE = "http://127.0.0.1:9/"  # nothing listens: the device has no server


def build(
    folder: Path,
    package: str,
    version: str,
    *,
    key: Any = PUBLISHER,
    log: Path,
    depends: dict[str, str] | None = None,
) -> PackResult:
    source = write_files(
        folder / f"src-{package}-{version}", {"version.txt": f"{package} {version}\n".encode()}
    )
    return pack(
        source,
        folder / f"out-{package}-{version}",
        package=package,
        branch="major",
        version=version,
        remote=NOWHERE,
        local=f"./{package}",
        before=hook(log, "before"),
        after=hook(log, "after"),
        depends=depends,
        signing_key=key,
    )


def bundle_create(out: Path, *packed: PackResult) -> Path:
    args = [sys.executable, "-m", "otakit", "bundle", "create", str(out)]
    for result in packed:
        args += ["--zip", str(result.zip_path), "--content", str(result.content_path)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return out


def install_bundle(config: Path, bundle: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otakit.daemon", "install-bundle", str(bundle), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def device(tmp_path: Path) -> Path:
    return tmp_path / "device"


def config_for(device: Path) -> Path:
    return write_config(device, trusted_keys=[public_key_line(PUBLISHER)], auto_update=False)


def test_a_device_without_a_server_installs_a_signed_bundle_with_its_dependency_first(
    tmp_path: Path, device: Path, pkg: str
) -> None:
    log = tmp_path / "hooks.log"
    lib = build(tmp_path, f"{pkg}-lib", "1.2", log=log)
    app = build(tmp_path, f"{pkg}-app", "2.0", log=log, depends={f"{pkg}-lib": ">=1.0"})
    bundle = bundle_create(tmp_path / "update.otabundle", app, lib)  # the CLI puts lib first
    config = config_for(device)
    with running(config) as api:
        done = install_bundle(config, bundle)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "succeeded" in done.stdout
        assert api.version(f"{pkg}-lib") == "1.2"
        assert api.version(f"{pkg}-app") == "2.0"
        assert (device / f"{pkg}-app" / "version.txt").read_text() == f"{pkg}-app 2.0\n"
        [job] = [j for j in api.get("/jobs")["list"] if j["package"] == f"{pkg}-app"]
        assert (job["action"], job["state"], job["to_version"]) == ("install", "succeeded", "2.0")
        assert any("signature verified" in line for line in job["log"])
    order = [(line.tag, line.package) for line in read_hooks(log)]
    assert order == [
        ("before", f"{pkg}-lib"),
        ("after", f"{pkg}-lib"),
        ("before", f"{pkg}-app"),
        ("after", f"{pkg}-app"),
    ]
    assert list((device / ".otakit-state" / "bundles").iterdir()) == []  # the received file is gone


def _refused(api: Api, bundle: Path) -> dict[str, Any]:
    answer = api.call("POST", "/bundles", content=bundle.read_bytes())
    assert answer.status_code == 202, answer.text
    return api.wait_job(answer.json()["job"]["id"])


def test_a_foreign_signed_or_tampered_bundle_is_refused_before_any_hook(
    tmp_path: Path, device: Path, pkg: str
) -> None:
    log = tmp_path / "hooks.log"
    foreign = bundle_create(
        tmp_path / "foreign.otabundle", build(tmp_path / "f", pkg, "1.0", key=STRANGER, log=log)
    )
    good = build(tmp_path / "g", pkg, "1.0", log=log)
    tampered = bundle_create(tmp_path / "tampered.otabundle", good)
    data = bytearray(tampered.read_bytes())
    with tarfile.open(tampered) as archive:
        member = archive.getmembers()[1]
        offset = member.offset_data + member.size // 2
    data[offset] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with running(config_for(device)) as api:
        job = _refused(api, foreign)
        assert job["state"] == "failed"
        assert "does not trust" in job["error"]
        job = _refused(api, tampered)
        assert job["state"] == "failed"
        assert "sha256" in job["error"]
        assert api.installed(pkg) is None
    assert read_hooks(log) == []
    assert not (device / pkg).exists()


def test_no_downgrade_and_the_same_version_is_nothing_to_do(tmp_path: Path, device: Path, pkg: str) -> None:
    log = tmp_path / "hooks.log"
    newer = bundle_create(tmp_path / "2.otabundle", build(tmp_path / "a", pkg, "2.0", log=log))
    older = bundle_create(tmp_path / "1.otabundle", build(tmp_path / "b", pkg, "1.0", log=log))
    with running(config_for(device)) as api:
        assert _refused(api, newer)["state"] == "succeeded"
        again = _refused(api, newer)
        assert again["state"] == "succeeded"
        assert any("nothing to do" in line for line in again["log"])
        job = _refused(api, older)
        assert job["state"] == "failed"
        assert "downgrade" in job["error"]
        assert api.version(pkg) == "2.0"
    assert len(read_hooks(log)) == 2  # the first install's two hooks only


def test_a_missing_dependency_is_refused_before_anything(tmp_path: Path, device: Path, pkg: str) -> None:
    log = tmp_path / "hooks.log"
    app = build(tmp_path, f"{pkg}-app", "1.0", log=log, depends={f"{pkg}-lib": ">=1.0"})
    with running(config_for(device)) as api:
        job = _refused(api, bundle_create(tmp_path / "app.otabundle", app))
        assert job["state"] == "failed"
        assert f"needs {pkg}-lib>=1.0" in job["error"]
    assert read_hooks(log) == []


def test_the_bundle_route_wants_the_token_and_a_bundle(tmp_path: Path, device: Path) -> None:
    config = config_for(device)
    with running(config) as api:
        url = f"{api.daemon.url}/bundles"
        assert httpx.post(url, content=b"not a bundle").status_code == 401
        refused = api.call("POST", "/bundles", content=b"not a bundle at all")
        assert refused.status_code == 400
        assert "bundle" in refused.json()["error"]
        assert api.call("POST", "/bundles", content=b"").status_code == 400
        assert list((device / ".otakit-state" / "bundles").iterdir()) == []
    done = install_bundle(config, tmp_path / "missing.otabundle")
    assert done.returncode == 1
    assert "is not a file" in done.stderr
    assert TOKEN not in done.stderr + done.stdout

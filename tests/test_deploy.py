"""The systemd units in deploy/ pass `systemd-analyze verify` without a single warning."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
BIN = Path(sys.executable).parent


UNITS = [
    ("otakit-daemon.service", "/opt/otakit/bin/otakit-daemon"),
    ("otakit-server.service", "/opt/otakit/bin/otakit"),
]


def systemd_analyze() -> str:
    """The systemd-analyze command (a failure in CI, a skip elsewhere, when it is missing)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing (install Debian's systemd package)")
        pytest.skip("systemd-analyze is not installed")
    return analyze


@pytest.mark.parametrize(("unit", "installed"), UNITS)
def test_unit_verifies_without_warnings(tmp_path: Path, unit: str, installed: str) -> None:
    analyze = systemd_analyze()
    text = (DEPLOY / unit).read_text()
    assert installed in text
    # The unit names where the deploy guide installs otakit; here it is this venv.
    copy = tmp_path / unit
    copy.write_text(text.replace(installed, str(BIN / Path(installed).name)))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
    assert result.stderr.strip() == "", f"systemd-analyze warned:\n{result.stderr}"


def test_daemon_unit_restarts_on_failure_and_allows_hooks_time() -> None:
    text = (DEPLOY / "otakit-daemon.service").read_text()
    assert "Restart=on-failure" in text
    assert "ExecStart=/opt/otakit/bin/otakit-daemon --config /etc/otakit/daemon.json" in text
    assert "TimeoutStopSec=660" in text  # longer than the default hook_timeout (600 s)


def test_cluster_template_unit_verifies_as_an_instance(tmp_path: Path) -> None:
    """deploy/cluster/otakit-server@.service: one instance per port, settings from cluster.env."""
    analyze = systemd_analyze()
    installed = "/opt/otakit/bin/otakit"
    text = (DEPLOY / "cluster" / "otakit-server@.service").read_text()
    assert f"ExecStart={installed} server --port %i" in text
    assert "EnvironmentFile=/etc/otakit/cluster.env" in text
    for hardening in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ReadWritePaths=/var/lib/otakit"):
        assert hardening in text
    # An instance, as `systemctl start otakit-server@8101` loads it; otakit is this venv's.
    copy = tmp_path / "otakit-server@8101.service"
    copy.write_text(text.replace(installed, str(BIN / "otakit")))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
    assert result.stderr.strip() == "", f"systemd-analyze warned:\n{result.stderr}"

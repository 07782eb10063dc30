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


@pytest.mark.parametrize(("unit", "installed"), UNITS)
def test_unit_verifies_without_warnings(tmp_path: Path, unit: str, installed: str) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing (install Debian's systemd package)")
        pytest.skip("systemd-analyze is not installed")
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

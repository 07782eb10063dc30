"""``make demo`` end to end: deploy/demo.py starts a server and real daemons, runs the staged rollout
to its automatic pause, and with ``--exit-when-paused`` stops every process it started."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser import browser, page, screenshot
from tests.servers import free_port

__all__ = ["browser", "page"]  # fixtures, used by name

DEMO = Path(__file__).resolve().parent.parent / "deploy" / "demo.py"


@pytest.mark.slow
def test_the_demo_reaches_a_rollout_paused_by_a_failure_and_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    args = ["--dir", str(tmp_path / "demo"), "--port", str(port), "--devices", "4", "--exit-when-paused"]
    done = subprocess.run(
        [sys.executable, str(DEMO), *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    paused = re.search(r"rollout \d+ paused by itself: (.*)", output)
    assert paused, output
    assert re.search(r"reported installs? failed \(.*% > 25\.0 %\); paused automatically", paused[1]), output
    assert re.search(r"demo-kiosk-1 +runs 1\.0\.0 +last job update to 1\.1\.0: rolled_back", output), output
    assert output.rstrip().endswith("stopped"), output

    daemon_ports = [int(p) for p in re.findall(r"local API on 127\.0\.0\.1:(\d+)", output)]
    assert len(daemon_ports) == 4, output
    for listening in [port, *daemon_ports]:  # nothing the demo started is left running
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{listening}/", timeout=2)


def read_until(process: subprocess.Popen[str], marker: str, timeout: float) -> str:
    """The demo's output up to the line holding ``marker`` (it prints as it goes)."""
    assert process.stdout is not None
    output = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        output += line
        if marker in line:
            return output
    raise AssertionError(f"the demo did not print {marker!r}:\n{output}")


@pytest.mark.slow
def test_an_operator_sees_the_demo_fleet_in_the_console(tmp_path: Path, page: Page) -> None:
    """``make demo`` as a newcomer meets it: the console shows the live fleet and the paused rollout.
    The README's screenshots are taken here."""
    port = free_port()
    args = ["--dir", str(tmp_path / "demo"), "--port", str(port), "--devices", "4"]
    process = subprocess.Popen(
        [sys.executable, str(DEMO), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output = read_until(process, "Ctrl-C to stop", timeout=180)
        login = re.search(r"log in +user (\S+), password (\S+)", output)
        assert login, output
        url = f"http://127.0.0.1:{port}"
        page.goto(f"{url}/console/")
        page.get_by_label("Username").fill(login[1])
        page.get_by_label("Password").fill(login[2])
        page.get_by_role("button", name="Log in").click()
        tiles = page.get_by_role("region", name="Devices")
        expect(tiles.get_by_role("link", name="4 online")).to_be_visible()
        expect(page.get_by_role("cell", name="paused")).to_be_visible()
        expect(page.get_by_role("link", name="demo-kiosk-1")).to_be_visible()  # its failure, listed
        screenshot(page, "console-overview")

        page.get_by_role("link", name="Rollouts").click()
        page.get_by_role("link", name="#1").click()
        expect(page.get_by_text("paused automatically")).to_be_visible()
        expect(page.get_by_role("button", name="Resume")).to_be_visible()
        screenshot(page, "console-rollout")

        page.get_by_role("link", name="Devices").click()
        for n in range(1, 5):
            expect(page.get_by_role("link", name=f"demo-kiosk-{n}")).to_be_visible()
        screenshot(page, "console-devices")
        page.get_by_role("link", name="demo-kiosk-1").click()
        expect(page.get_by_text("self-test failed").first).to_be_visible()
        screenshot(page, "console-device", full_page=False)

        page.get_by_role("link", name="Packages").click()
        page.get_by_role("link", name="demo-app").first.click()
        expect(page.get_by_role("img", name=re.compile("demo-app"))).to_be_visible()
        screenshot(page, "console-package")
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    assert process.returncode == 0, rest
    assert rest.rstrip().endswith("stopped"), rest

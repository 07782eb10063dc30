"""The fleet API's paths (``otakit.protocol`` holds its bodies and answers). Free of pydantic, so the CLI
starts fast."""

from __future__ import annotations

from otakit.names import check_name

__all__ = ["DEVICES", "ROLLOUTS", "VERSIONS", "device_path"]

DEVICES = "/api/v1/devices"
ROLLOUTS = "/api/v1/rollouts"
VERSIONS = "/api/v1/versions"


def device_path(device: str, action: str = "") -> str:
    """``/api/v1/devices/{device}[/{action}]`` (``device`` must be a name, so it needs no quoting)."""
    return f"{DEVICES}/{check_name(device, 'device')}" + (f"/{action}" if action else "")

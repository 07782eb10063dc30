from __future__ import annotations

import json

import pytest

from otakit.device_config import parse_device_config
from otakit.errors import ValidationError
from tests.samples import LEGACY


def test_legacy_daemon_config_loads_as_it_is() -> None:
    config = parse_device_config((LEGACY / "daemon-config.json").read_bytes())
    assert config.device == "mytest"
    assert config.api.host == "0.0.0.0"
    assert config.api.port == 5000
    assert config.api.debug is True
    assert config.token == "123456"
    assert [p.package for p in config.package] == ["test"]  # read from "packages"
    assert config.package[0].local == "./test"
    assert config.poll_interval == 1800
    assert config.auto_update is True


def test_written_with_the_seed_names_and_packages_untouched() -> None:
    raw = json.loads((LEGACY / "daemon-config.json").read_bytes())
    written = parse_device_config(json.dumps(raw)).to_json()
    assert "packages" not in written
    assert written["package"] == raw["packages"]
    assert written["flask"] == raw["flask"]
    again = parse_device_config(json.dumps(written))
    assert again.to_json() == written


def test_http_is_an_alias_of_flask() -> None:
    config = parse_device_config(json.dumps({"token": "t", "http": {"host": "127.0.0.1", "port": 9}}))
    assert config.api.port == 9


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "JSON object"),
        (json.dumps({"device": "d"}).encode(), "token is required"),
        (json.dumps({"token": ""}).encode(), "token"),
        (json.dumps({"token": "t", "flask": {"port": 70000}}).encode(), "port"),
        (json.dumps({"token": "t", "poll_interval": -1}).encode(), "poll_interval"),
        (json.dumps({"token": "t", "package": [{"package": "x"}]}).encode(), "version is required"),
    ],
)
def test_invalid_config_names_the_field(raw: bytes, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_device_config(raw)


def test_trusted_keys_are_checked_at_load() -> None:
    with pytest.raises(ValidationError, match="trusted key"):
        parse_device_config(json.dumps({"token": "t", "trusted_keys": ["rsa:AAAA"]}))
    key = "ed25519:" + "A" * 43 + "="
    assert parse_device_config(json.dumps({"token": "t", "trusted_keys": [key]})).trusted_keys == [key]


def test_unknown_keys_are_kept_and_named() -> None:
    raw = {"token": "t", "poll_intervall": 5, "flask": {"port": 9, "hots": "x"}, "http": {}}
    config = parse_device_config(json.dumps({k: v for k, v in raw.items() if k != "http"}))
    assert config.unknown_keys() == ["poll_intervall", "flask.hots"]
    assert config.poll_interval == 1800  # the misspelt key sets nothing
    assert config.to_json()["poll_intervall"] == 5
    assert parse_device_config((LEGACY / "daemon-config.json").read_bytes()).unknown_keys() == []

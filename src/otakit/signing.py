"""Publisher signatures over content.json (ed25519), pure: bytes and dicts in, a result or an error out.

Canonical form: ``json.dumps(content_without_signature, sort_keys=True, separators=(",", ":"),
ensure_ascii=False).encode("utf-8")``. ``keyid``: the first 16 hex digits of the sha256 of the raw
32-byte public key. ``sig``: standard base64 of the 64-byte signature. A public key is written as one
line, ``ed25519:<base64 of the raw public key>``. Any implementation that follows this verifies any
other's signatures; since content.json carries the zip's sha256, the signature covers the zip too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from otakit.errors import ValidationError, VerificationError

__all__ = [
    "PublicKey",
    "canonical_bytes",
    "generate_private_key",
    "load_private_key",
    "parse_public_key",
    "private_key_pem",
    "public_key_line",
    "sign_content",
    "verify_content",
]

_PREFIX = "ed25519:"


@dataclass(frozen=True)
class PublicKey:
    raw: bytes

    @property
    def keyid(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()[:16]

    def line(self) -> str:
        return _PREFIX + base64.b64encode(self.raw).decode("ascii")


def canonical_bytes(content: dict[str, Any]) -> bytes:
    """What is signed: every key but ``signature``, sorted, compact, UTF-8."""
    unsigned = {key: value for key, value in content.items() if key != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private_key(data: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValidationError(f"not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValidationError("the private key is not an ed25519 key")
    return key


def _public(key: Ed25519PrivateKey) -> PublicKey:
    return PublicKey(
        key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def public_key_line(key: Ed25519PrivateKey) -> str:
    return _public(key).line()


def parse_public_key(line: str) -> PublicKey:
    """``ed25519:<base64 raw key>`` as written by ``otakit keygen``."""
    text = line.strip()
    if not text.startswith(_PREFIX):
        raise ValidationError(f"a trusted key must look like 'ed25519:<base64>', not {text[:40]!r}")
    try:
        raw = base64.b64decode(text[len(_PREFIX) :], validate=True)
    except binascii.Error:
        raise ValidationError(f"the trusted key {text[:40]!r} is not valid base64") from None
    if len(raw) != 32:
        raise ValidationError(f"the trusted key {text[:40]!r} is not 32 bytes long")
    return PublicKey(raw)


def sign_content(content: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """A copy of ``content`` with ``signature`` set over all its other values."""
    signature = key.sign(canonical_bytes(content))
    signed = {k: v for k, v in content.items() if k != "signature"}
    signed["signature"] = {"keyid": _public(key).keyid, "sig": base64.b64encode(signature).decode("ascii")}
    return signed


def verify_content(content: dict[str, Any], trusted: Iterable[PublicKey]) -> PublicKey:
    """Return the trusted key whose signature ``content`` carries; VerificationError otherwise."""
    name = f"{content.get('package')!s} {content.get('version')!s}"
    signature = content.get("signature")
    if not isinstance(signature, dict):
        raise VerificationError(f"{name} is not signed, and this device only installs signed packages")
    keyid, sig = signature.get("keyid"), signature.get("sig")
    if not isinstance(keyid, str) or not isinstance(sig, str):
        raise VerificationError(f"{name} has a malformed signature")
    try:
        raw_sig = base64.b64decode(sig, validate=True)
    except binascii.Error:
        raise VerificationError(f"{name} has a malformed signature (not base64)") from None
    message = canonical_bytes(content)
    for key in trusted:
        if key.keyid != keyid:
            continue
        try:
            Ed25519PublicKey.from_public_bytes(key.raw).verify(raw_sig, message)
        except InvalidSignature:
            raise VerificationError(f"{name}: the signature does not match the content (tampered?)") from None
        return key
    raise VerificationError(f"{name} is signed by key {keyid[:16]!r}, which this device does not trust")

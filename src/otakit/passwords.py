"""Operators' passwords: salted, slow scrypt hashes (pure; no I/O).

A stored hash reads ``scrypt$<n>$<r>$<p>$<salt>$<hash>`` (base64, no padding), so the cost can grow
later without breaking the hashes already stored: each is checked with the parameters it names.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from otakit.errors import ValidationError

__all__ = ["MIN_LENGTH", "check_new_password", "hash_password", "verify_password"]

MIN_LENGTH = 8
_N, _R, _P = 2**15, 8, 1  # about 50 ms and 32 MiB per hash here: slow for a guesser, fine for a login
_MAXMEM = 64 * 1024 * 1024
_LENGTH = 32


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def check_new_password(password: str) -> None:
    """Refuse a password too short or too long to be one (``ValidationError``)."""
    if len(password) < MIN_LENGTH:
        raise ValidationError(f"a password has at least {MIN_LENGTH} characters")
    if len(password) > 1024:
        raise ValidationError("a password has at most 1024 characters")


def hash_password(password: str, *, n: int = _N, r: int = _R, p: int = _P) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=_LENGTH)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` is the one ``stored`` was made from; False for a malformed hash."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        expected = _unb64(digest)
        got = hashlib.scrypt(
            password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), maxmem=_MAXMEM,
            dklen=len(expected),
        )  # fmt: skip
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)

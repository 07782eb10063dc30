"""Operators' password hashes (pure)."""

from __future__ import annotations

import pytest

from otakit.errors import ValidationError
from otakit.passwords import check_new_password, hash_password, verify_password

FAST = {"n": 2**10, "r": 8, "p": 1}  # the same code path at a cost tests can afford many times


def test_a_hash_verifies_its_password_only() -> None:
    stored = hash_password("correct horse", **FAST)
    assert verify_password("correct horse", stored)
    assert not verify_password("correct horsf", stored)
    assert not verify_password("", stored)


def test_hashes_are_salted_and_name_their_cost() -> None:
    first, second = hash_password("same password", **FAST), hash_password("same password", **FAST)
    assert first != second  # a salt of its own each time
    kind, n, r, p, _salt, _digest = first.split("$")
    assert (kind, int(n), int(r), int(p)) == ("scrypt", 2**10, 8, 1)
    assert "same password" not in first


def test_the_default_cost_is_slow() -> None:
    _, n, r, _p, _, _ = hash_password("x" * 8).split("$")
    assert int(n) >= 2**15
    assert int(r) >= 8


def test_a_stored_hash_is_checked_with_its_own_parameters() -> None:
    cheap = hash_password("pw-123456", n=2**8, r=4, p=1)
    assert verify_password("pw-123456", cheap)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plain",
        "bcrypt$1$2$3$4$5",
        "scrypt$x$8$1$AAAA$AAAA",
        "scrypt$1024$8$1$!!!$AAAA",
        "scrypt$1024$8$1",
    ],
)
def test_a_malformed_hash_verifies_nothing(stored: str) -> None:
    assert not verify_password("anything", stored)


def test_new_passwords_have_a_minimum_length() -> None:
    with pytest.raises(ValidationError, match="at least 8"):
        check_new_password("short")
    check_new_password("long enough")
    with pytest.raises(ValidationError, match="at most"):
        check_new_password("x" * 1025)

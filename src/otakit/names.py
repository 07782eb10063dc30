"""Package and branch names: the only strings that ever become parts of a path."""

from __future__ import annotations

import re

from otakit.errors import ValidationError

__all__ = ["MAX_NAME_LENGTH", "NAME_PATTERN", "check_name"]

MAX_NAME_LENGTH = 100
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_NAME_RE = re.compile(NAME_PATTERN)


def check_name(value: object, what: str = "package") -> str:
    """Return ``value`` if it is a valid package or branch name, else raise ValidationError.

    A name starts with a letter or digit, continues with letters, digits, ``.``, ``_`` or ``-``, and is
    at most 100 characters: it can never be ``..``, contain ``/`` or NUL, or be empty.
    """
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{what} is required")
    if len(value) > MAX_NAME_LENGTH or _NAME_RE.fullmatch(value) is None:
        raise ValidationError(
            f"invalid {what} {value[:120]!r}: use letters, digits, '.', '_' and '-', "
            f"starting with a letter or digit, at most {MAX_NAME_LENGTH} characters"
        )
    return value

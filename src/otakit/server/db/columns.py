"""Reading column values as both drivers return them (aiosqlite: str, int, float; aiomysql: str or bytes,
int, float or Decimal), into the Python types the aggregates keep."""

from __future__ import annotations

from decimal import Decimal

__all__ = ["flag", "integer", "number", "text"]


def text(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8")
    if not isinstance(value, str):
        raise TypeError(f"expected a text column, got {type(value).__name__}")
    return value


def flag(value: object) -> bool:
    if not isinstance(value, int):  # SQLite's INTEGER and MySQL's TINYINT(1) both read back as int
        raise TypeError(f"expected an integer flag column, got {type(value).__name__}")
    return value != 0


def integer(value: object) -> int:
    if not isinstance(value, int | Decimal):  # COUNT(*) and SUM are DECIMAL on MySQL
        raise TypeError(f"expected an integer column, got {type(value).__name__}")
    return int(value)


def number(value: object) -> float:
    if not isinstance(value, int | float | Decimal):
        raise TypeError(f"expected a number column, got {type(value).__name__}")
    return float(value)

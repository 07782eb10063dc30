"""Plain numbered SQL migration files, one folder per dialect (``migrations/<dialect>/NNNN_name.sql``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Migration", "load_migrations", "migrations_dir"]

_FILE_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    number: int
    name: str
    statements: list[str]


def migrations_dir(dialect: str) -> Path:
    """The folder of ``dialect``'s migrations: inside the installed package, or the source checkout's."""
    package_root = Path(__file__).resolve().parents[2]  # src/otakit
    for candidate in (
        package_root / "_migrations" / dialect,
        package_root.parents[1] / "migrations" / dialect,
    ):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no migrations folder for {dialect}")


def _split(sql: str) -> list[str]:
    """Statements separated by ``;`` at the end of a line; ``--`` comment lines dropped."""
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return [stmt.strip() for stmt in re.split(r";\s*$", "\n".join(lines), flags=re.M) if stmt.strip()]


def load_migrations(dialect: str) -> list[Migration]:
    found = []
    for path in sorted(migrations_dir(dialect).iterdir()):
        match = _FILE_RE.match(path.name)
        if match:
            found.append(Migration(int(match.group(1)), path.stem, _split(path.read_text("utf-8"))))
    numbers = [m.number for m in found]
    if len(set(numbers)) != len(numbers):
        raise RuntimeError(f"two {dialect} migrations share a number: {numbers}")
    return found

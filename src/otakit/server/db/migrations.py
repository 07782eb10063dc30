"""Plain numbered SQL migration files, one folder per dialect (``migrations/<dialect>/NNNN_name.sql``),
each applied once and recorded in ``otakit_migrations``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from otakit.server.db.base import Driver, Lock

__all__ = ["Migration", "load_migrations", "migrations_dir", "upgrade"]

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


async def upgrade(driver: Driver) -> list[str]:
    """Apply the migrations that have not run yet, in order; return their names.

    Under a named lock, so that processes starting together apply each one once. On SQLite they all
    run in that one transaction; on MySQL every DDL statement commits by itself, so a migration is
    recorded once all its statements have run.
    """
    lock = Lock(("migrations",), f"{driver.label}: another process is migrating it", wait_s=60)
    applied: list[str] = []
    async with driver.transaction(lock) as tx:
        await driver.create_migrations_table(tx)
        done = {number for (number,) in await tx.fetch("SELECT number FROM otakit_migrations")}
        for migration in load_migrations(driver.dialect):
            if migration.number in done:
                continue
            for statement in migration.statements:
                await tx.execute(statement)
            await tx.execute(
                "INSERT INTO otakit_migrations (number, name) VALUES (?, ?)",
                (migration.number, migration.name),
            )
            applied.append(migration.name)
    return applied

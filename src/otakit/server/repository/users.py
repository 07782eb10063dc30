"""The console's operators, their sessions, the login throttle and the server's generated secrets.

Sessions are rows by the sha256 of their id, so a stolen database holds no usable cookie; logging out
or changing a password deletes them. Every method may raise ``UnavailableError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from otakit.errors import ConflictError
from otakit.server.db import Driver
from otakit.server.db.columns import integer, number, text

__all__ = ["UserRow", "Users"]


@dataclass(frozen=True, slots=True)
class UserRow:
    name: str
    password_hash: str
    created: float


class Users:
    """The users aggregate on one driver."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    # -- operators ---------------------------------------------------------------------------------

    async def add(self, name: str, password_hash: str, *, now: float) -> None:
        """Store a new operator; ``ConflictError`` when the name is taken."""
        await self.driver.execute(
            "INSERT INTO users (name, password_hash, created) VALUES (?, ?, ?)", (name, password_hash, now)
        )

    async def get(self, name: str) -> UserRow | None:
        row = await self.driver.fetch_one(
            "SELECT name, password_hash, created FROM users WHERE name = ?", (name,)
        )
        return None if row is None else UserRow(text(row[0]), text(row[1]), number(row[2]))

    async def list(self) -> list[UserRow]:
        rows = await self.driver.fetch("SELECT name, password_hash, created FROM users ORDER BY name")
        return [UserRow(text(name), text(hashed), number(at)) for name, hashed, at in rows]

    async def set_password(self, name: str, password_hash: str) -> bool:
        """Replace the password and end the operator's sessions; False for no such operator."""
        async with self.driver.transaction() as tx:
            done = await tx.execute(
                "UPDATE users SET password_hash = ? WHERE name = ?", (password_hash, name)
            )
            await tx.execute("DELETE FROM sessions WHERE user_name = ?", (name,))
        return done.rowcount > 0

    async def delete(self, name: str) -> bool:
        """Forget the operator and end its sessions; False for no such operator."""
        async with self.driver.transaction() as tx:
            done = await tx.execute("DELETE FROM users WHERE name = ?", (name,))
            await tx.execute("DELETE FROM sessions WHERE user_name = ?", (name,))
        return done.rowcount > 0

    # -- sessions ----------------------------------------------------------------------------------

    async def start_session(self, id_hash: str, name: str, *, now: float, expires: float) -> None:
        async with self.driver.transaction() as tx:
            await tx.execute("DELETE FROM sessions WHERE expires <= ?", (now,))  # the expired ones go
            await tx.execute(
                "INSERT INTO sessions (id_hash, user_name, created, expires) VALUES (?, ?, ?, ?)",
                (id_hash, name, now, expires),
            )

    async def session_user(self, id_hash: str, *, now: float) -> str | None:
        """The operator of a live session (one that has neither ended nor expired), or None."""
        row = await self.driver.fetch_one(
            "SELECT s.user_name FROM sessions s JOIN users u ON u.name = s.user_name"
            " WHERE s.id_hash = ? AND s.expires > ?",
            (id_hash, now),
        )
        return None if row is None else text(row[0])

    async def end_session(self, id_hash: str) -> None:
        await self.driver.execute("DELETE FROM sessions WHERE id_hash = ?", (id_hash,))

    # -- the login throttle ------------------------------------------------------------------------

    async def failures(self, address: str, *, now: float, window: float) -> int:
        """Failed logins from ``address`` in its current window (0 once the window is over)."""
        row = await self.driver.fetch_one(
            "SELECT window_start, failures FROM login_failures WHERE address = ?", (address,)
        )
        if row is None or now - number(row[0]) >= window:
            return 0
        return integer(row[1])

    async def add_failure(self, address: str, *, now: float, window: float) -> int:
        """Count one failed login from ``address``; a window starts at the first failure after the last
        one ended. Returns the failures in the window, this one included."""
        async with self.driver.transaction() as tx:
            row = await tx.fetch_one(
                "SELECT window_start, failures FROM login_failures WHERE address = ?", (address,)
            )
            if row is not None and now - number(row[0]) < window:
                count = integer(row[1]) + 1
                await tx.execute("UPDATE login_failures SET failures = ? WHERE address = ?", (count, address))
                return count
            if row is not None:
                await tx.execute(
                    "UPDATE login_failures SET window_start = ?, failures = 1 WHERE address = ?",
                    (now, address),
                )
            else:
                await tx.execute(
                    "INSERT INTO login_failures (address, window_start, failures) VALUES (?, ?, 1)",
                    (address, now),
                )
            await tx.execute("DELETE FROM login_failures WHERE window_start < ?", (now - 24 * 3600,))
        return 1

    # -- generated secrets -------------------------------------------------------------------------

    async def secret(self, name: str, generate: Callable[[], str]) -> str:
        """The secret ``name``, made with ``generate`` by whichever process asks first."""
        row = await self.driver.fetch_one("SELECT value FROM server_secrets WHERE name = ?", (name,))
        if row is not None:
            return text(row[0])
        with contextlib.suppress(ConflictError):  # another process made it first: theirs is the one
            await self.driver.execute(
                "INSERT INTO server_secrets (name, value) VALUES (?, ?)", (name, generate())
            )
        row = await self.driver.fetch_one("SELECT value FROM server_secrets WHERE name = ?", (name,))
        assert row is not None
        return text(row[0])

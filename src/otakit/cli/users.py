"""``otakit user add|list|delete|passwd``: the web console's operators, in the server's database.

These commands open the database named by the server's settings (``--config``, ``OTAKIT_DATABASE_URL``)
directly, as ``otakit db upgrade`` does: they need no running server and no token.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from otakit.cli.errors import reporting_errors
from otakit.cli.server import ConfigOption, server_repository, server_settings

if TYPE_CHECKING:
    from otakit.errors import OtakitError
    from otakit.server.repository import Repository

__all__ = ["user_app"]

user_app = typer.Typer(
    help="The web console's operators (users in the server's database).", no_args_is_help=True
)

_T = TypeVar("_T")
NameArgument = Annotated[str, typer.Argument(help="the operator's name (letters, digits, '.', '_', '-')")]
StdinOption = Annotated[
    bool, typer.Option("--password-stdin", help="read the password from the first line of stdin")
]


def _password(from_stdin: bool) -> str:
    """The new password, checked and hashed (salted scrypt)."""
    from otakit.passwords import check_new_password, hash_password

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    check_new_password(password)
    return hash_password(password)


def _run(config: ConfigOption, work: Callable[[Repository], Awaitable[_T]]) -> _T:
    import asyncio

    async def go() -> _T:
        async with server_repository(server_settings(config)) as repo:
            await repo.upgrade()
            return await work(repo)

    return asyncio.run(go())


def _name(name: str) -> str:
    from otakit.names import check_name

    return check_name(name, "user")


@user_app.command("add")
def add(name: NameArgument, password_stdin: StdinOption = False, config: ConfigOption = None) -> None:
    """Add an operator; asks for the password twice (or reads it with --password-stdin)."""
    from otakit.errors import ConflictError

    with reporting_errors():
        _name(name)
        hashed = _password(password_stdin)

        async def work(repo: Repository) -> None:
            try:
                await repo.users.add(name, hashed, now=time.time())
            except ConflictError:
                raise ConflictError(
                    f"user {name} exists already (a new password: otakit user passwd {name})"
                ) from None

        _run(config, work)
    typer.echo(f"added user {name}")


@user_app.command("list")
def list_users(config: ConfigOption = None) -> None:
    """List the operators, one per line, with when each was added."""
    from otakit.web import iso_utc

    with reporting_errors():

        async def work(repo: Repository) -> list[tuple[str, float]]:
            return [(user.name, user.created) for user in await repo.users.list()]

        users = _run(config, work)
    for name, created in users:
        typer.echo(f"{name}\t{iso_utc(created)}")


def _not_found(name: str) -> OtakitError:
    from otakit.errors import NotFoundError

    return NotFoundError(f"no user {name}")


@user_app.command("delete")
def delete(name: NameArgument, config: ConfigOption = None) -> None:
    """Delete an operator; its sessions end at once."""
    with reporting_errors():

        async def work(repo: Repository) -> bool:
            return await repo.users.delete(name)

        _name(name)
        if not _run(config, work):
            raise _not_found(name)
    typer.echo(f"deleted user {name}")


@user_app.command("passwd")
def passwd(name: NameArgument, password_stdin: StdinOption = False, config: ConfigOption = None) -> None:
    """Set an operator's password; its sessions end at once."""
    with reporting_errors():
        _name(name)
        hashed = _password(password_stdin)

        async def work(repo: Repository) -> bool:
            return await repo.users.set_password(name, hashed)

        if not _run(config, work):
            raise _not_found(name)
    typer.echo(f"changed the password of {name}")

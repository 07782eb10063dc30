"""The console's users page: the operators, adding one, setting a password, deleting one.

Every operator may do all of it (otakit has no roles); ``otakit user …`` does the same from a shell.
A password change or a deletion ends that operator's sessions at once.
"""

from __future__ import annotations

import time
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Form, Request
from starlette.responses import Response

from otakit.errors import ConflictError, NotFoundError, ValidationError
from otakit.names import check_name
from otakit.passwords import check_new_password, hash_password
from otakit.server.console.auth import OperatorDep, check_csrf
from otakit.server.console.render import ConsoleRoute, Done, back_to, form_action, render
from otakit.server.deps import app_state

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)

_PAGE = "/console/users"
_Csrf = Annotated[str, Form(max_length=200)]
_Field = Annotated[str, Form(max_length=1024)]


@router.get("/users")
async def users_page(request: Request, who: OperatorDep) -> Response:
    users = await app_state(request).repo.users.list()
    return render(request, "users.html", who, section="users", users=users)


async def _new_hash(password: str, repeat: str) -> str:
    if password != repeat:
        raise ValidationError("the two passwords differ")
    check_new_password(password)
    return await anyio.to_thread.run_sync(hash_password, password)


@router.post("/users")
async def add_user(
    request: Request, who: OperatorDep, username: _Field, password: _Field, repeat: _Field, csrf: _Csrf = ""
) -> Response:
    async def operation() -> Done:
        check_name(username, "user")
        hashed = await _new_hash(password, repeat)
        try:
            await app_state(request).repo.users.add(username, hashed, now=time.time())
        except ConflictError:
            raise ConflictError(f"user {username} exists already") from None
        return Done(f"Added user {username}.")

    return await form_action(request, who, csrf, _PAGE, operation)


@router.post("/users/{name}/password")
async def set_password(
    request: Request, name: str, who: OperatorDep, password: _Field, repeat: _Field, csrf: _Csrf = ""
) -> Response:
    async def operation() -> Done:
        hashed = await _new_hash(password, repeat)
        if not await app_state(request).repo.users.set_password(check_name(name, "user"), hashed):
            raise NotFoundError(f"no user {name}")
        if name == who.name:  # its own sessions ended with the change, this one too
            return Done("Your password is changed: log in with the new one.", "/console/login")
        return Done(f"Changed the password of {name}; their sessions are ended.")

    return await form_action(request, who, csrf, _PAGE, operation)


@router.post("/users/{name}/delete")
async def delete_user(request: Request, name: str, who: OperatorDep, csrf: _Csrf = "") -> Response:
    check_csrf(request, who, csrf)
    if name == who.name:
        return back_to(request, _PAGE, "you cannot delete yourself here (otakit user delete)", "error")
    if not await app_state(request).repo.users.delete(check_name(name, "user")):
        return back_to(request, _PAGE, f"no user {name}", "error")
    return back_to(request, _PAGE, f"Deleted user {name}.")

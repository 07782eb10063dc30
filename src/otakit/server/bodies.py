"""Reading a JSON request body into a model: bounded, and only after the caller has been authorised."""

from __future__ import annotations

from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from otakit.content import describe_pydantic_error
from otakit.errors import TooLargeError, ValidationError

__all__ = ["read_model"]

_M = TypeVar("_M", bound=BaseModel)


async def read_model(request: Request, model: type[_M], limit: int, *, empty_ok: bool = False) -> _M:
    """The body as ``model``: 413 over ``limit`` bytes (read no further), 400 for anything not valid.

    With ``empty_ok``, an empty body is the model's defaults.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLargeError(f"the request body is over the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLargeError(f"the request body is over the limit of {limit} bytes")
    if not body.strip() and empty_ok:
        return model()
    try:
        return model.model_validate_json(bytes(body))
    except PydanticValidationError as exc:
        if any(error["type"] == "json_invalid" for error in exc.errors()):
            raise ValidationError("the request body is not valid JSON") from None
        raise ValidationError(f"invalid request body: {describe_pydantic_error(exc)}") from None

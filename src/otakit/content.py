"""content.json: the description of one package version, shared by server, daemon and CLI.

The model validates what otakit relies on and keeps everything else. The dictionary a ``Content`` was
read from is kept too (``Content.raw``): the server stores and serves exactly those values, because a
publisher's signature covers all of them.
"""

from __future__ import annotations

import json
import re
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import Version
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator
from pydantic import ValidationError as PydanticValidationError

from otakit.errors import ValidationError
from otakit.names import check_name
from otakit.versions import parse_specifier, parse_version, version_key

__all__ = ["Content", "Signature", "describe_pydantic_error", "load_json_object", "parse_content"]

_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")


class Signature(BaseModel):
    model_config = ConfigDict(extra="allow")

    keyid: str
    sig: str


class Content(BaseModel):
    """One content.json. Field names follow the file (``updateInfo``, ``BeforeUpdate``, ...)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)

    package: str
    version: str
    branch: str
    sha256: str
    description: str = ""
    update_info: str = Field("", alias="updateInfo")
    local: str = ""
    remote: str = ""
    before_update: str = Field("", alias="BeforeUpdate")
    after_update: str = Field("", alias="AfterUpdate")
    dependencies: dict[str, str] | list[str] = Field(default_factory=dict)
    signature: Signature | None = None

    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    @field_validator("package")
    @classmethod
    def _check_package(cls, value: str) -> str:
        return check_name(value, "package")

    @field_validator("branch")
    @classmethod
    def _check_branch(cls, value: str) -> str:
        return check_name(value, "branch")

    @field_validator("version")
    @classmethod
    def _check_version(cls, value: str) -> str:
        parse_version(value)
        return value

    @field_validator("sha256")
    @classmethod
    def _check_sha256(cls, value: str) -> str:
        if _SHA256_RE.fullmatch(value) is None:
            raise ValueError("sha256 must be 64 hexadecimal digits")
        return value

    @field_validator("dependencies")
    @classmethod
    def _check_dependencies(cls, value: dict[str, str] | list[str]) -> dict[str, str] | list[str]:
        names = value if isinstance(value, list) else list(value)
        for name in names:
            check_name(name, "dependency name")
        if isinstance(value, dict):
            for spec in value.values():
                parse_specifier(spec)
        return value

    def model_post_init(self, context: Any, /) -> None:
        if not self._raw:
            self._raw = self.model_dump(by_alias=True, exclude_none=True)

    @property
    def raw(self) -> dict[str, Any]:
        """The values as read (or, for a content built in code, as dumped): what is stored and served."""
        return self._raw

    @property
    def parsed_version(self) -> Version:
        return parse_version(self.version)

    @property
    def version_key(self) -> str:
        return version_key(self.version)

    @property
    def requirements(self) -> dict[str, SpecifierSet]:
        """Dependencies as specifier sets; a bare version means exactly it, a listed name any version."""
        if isinstance(self.dependencies, list):
            return {name: SpecifierSet() for name in self.dependencies}
        return {name: parse_specifier(spec) for name, spec in self.dependencies.items()}

    def sha256_matches(self, digest: str) -> bool:
        return self.sha256.lower() == digest.lower()

    @property
    def file_name(self) -> str:
        return f"{self.package}-{self.branch}-{self.version}.zip"


def describe_pydantic_error(err: PydanticValidationError) -> str:
    """One sentence naming the first offending field."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "value"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        return f"{where} is required"
    return f"{where}: {message}"


def load_json_object(data: bytes | str, source: str) -> dict[str, Any]:
    """Decode JSON text that must be an object; ValidationError naming ``source`` otherwise."""
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValidationError(f"{source} must be a JSON object")
    return raw


def parse_content(data: bytes | str | dict[str, Any], source: str = "content.json") -> Content:
    """Validate a content.json given as JSON text or an already-decoded object."""
    raw = data if isinstance(data, dict) else load_json_object(data, source)
    try:
        content = Content.model_validate(raw)
    except PydanticValidationError as exc:
        raise ValidationError(f"invalid {source}: {describe_pydantic_error(exc)}") from None
    except ValidationError as exc:
        raise ValidationError(f"invalid {source}: {exc}") from None
    content._raw = raw
    return content

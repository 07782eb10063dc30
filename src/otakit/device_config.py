"""The daemon's config file: the device, its local API, and the record of what is installed.

The seed's format, read as the original project wrote it too: ``packages`` is accepted for ``package``
and ``http`` for ``flask``; written back with the seed's names. Installed packages are content.json
objects kept as they were received (``Content.raw``).
"""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from otakit.content import Content, describe_pydantic_error, load_json_object, parse_content
from otakit.errors import ValidationError
from otakit.names import check_name
from otakit.signing import parse_public_key
from otakit.urls import http_base

__all__ = ["ApiListen", "DeviceConfig", "parse_device_config"]


class ApiListen(BaseModel):
    """Where the local API listens (the seed calls this block ``flask``)."""

    model_config = ConfigDict(extra="allow")

    host: str = "127.0.0.1"
    port: int = Field(8765, ge=1, le=65535)
    debug: bool = False


class DeviceConfig(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    device: str = ""
    description: str = ""
    api: ApiListen = Field(default_factory=ApiListen, validation_alias=AliasChoices("flask", "http", "api"))
    token: str
    package: list[Content] = Field(default_factory=list, validation_alias=AliasChoices("package", "packages"))
    poll_interval: float = Field(1800, ge=0)
    auto_update: bool = True
    trusted_keys: list[str] = Field(default_factory=list)
    hook_timeout: float = Field(600, gt=0)
    download_retries: int = Field(5, ge=0)
    max_download_bytes: int = Field(10 * 1024**3, gt=0)
    state_dir: str = ".otakit-state"
    # Joining a fleet (see DESIGN.md, "Daemon side"); the bounds are the wire protocol's.
    registry: str | None = None
    enroll_token: str = ""
    tags: list[str] = Field(default_factory=list, max_length=100)
    attributes: dict[str, str] = Field(default_factory=dict, max_length=100)

    def unknown_keys(self) -> list[str]:
        """Keys of the file the daemon does not use (kept as they are when it is rewritten)."""
        return [*(self.model_extra or {}), *(f"flask.{key}" for key in self.api.model_extra or {})]

    def installed(self, name: str) -> Content | None:
        return next((content for content in self.package if content.package == name), None)

    def with_package(self, content: Content) -> DeviceConfig:
        """A copy recording ``content`` as installed (replacing the same package)."""
        others = [c for c in self.package if c.package != content.package]
        return self.model_copy(update={"package": [*others, content]})

    def without_package(self, name: str) -> DeviceConfig:
        return self.model_copy(update={"package": [c for c in self.package if c.package != name]})

    @field_validator("token")
    @classmethod
    def _check_token(cls, value: str) -> str:
        if not value:
            raise ValueError("token must not be empty: it guards the local API")
        return value

    @field_validator("trusted_keys")
    @classmethod
    def _check_keys(cls, value: list[str]) -> list[str]:
        for line in value:
            try:
                parse_public_key(line)
            except ValidationError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("registry")
    @classmethod
    def _check_registry(cls, value: str | None) -> str | None:
        if not value:
            return None
        try:
            http_base(value, "registry")
        except ValidationError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("tags")
    @classmethod
    def _check_tags(cls, value: list[str]) -> list[str]:
        for tag in value:
            _name(tag, "tag")
        return value

    @field_validator("attributes")
    @classmethod
    def _check_attributes(cls, value: dict[str, str]) -> dict[str, str]:
        for key, text in value.items():
            _name(key, "attribute name")
            if len(text) > 1000:
                raise ValueError(f"attribute {key}: the value is over 1000 characters")
        return value

    @model_validator(mode="after")
    def _check_fleet_device(self) -> DeviceConfig:
        # Raised as our error, so that the message is not prefixed with pydantic's "value".
        if self.registry:
            if not self.device:
                raise ValidationError("device is required when registry is set: it is the device's id there")
            check_name(self.device, "device")
        return self

    @field_validator("package", mode="before")
    @classmethod
    def _parse_packages(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [
                parse_content(item, "installed package") if isinstance(item, dict) else item for item in value
            ]
        return value

    def to_json(self) -> dict[str, Any]:
        """The file's form, with the seed's key names and each package as it was received.

        Settings the file did not name stay unnamed, so a rewrite changes only what changed."""
        out = self.model_dump(mode="json", exclude={"api", "package"}, exclude_unset=True)
        out["flask"] = self.api.model_dump(mode="json")
        out["package"] = [content.raw for content in self.package]
        return out


def _name(value: str, what: str) -> None:
    try:
        check_name(value, what)
    except ValidationError as exc:
        raise ValueError(str(exc)) from None


def parse_device_config(data: bytes | str, source: str = "daemon config") -> DeviceConfig:
    raw = load_json_object(data, source)
    try:
        return DeviceConfig.model_validate(raw)
    except PydanticValidationError as exc:
        raise ValidationError(f"invalid {source}: {describe_pydantic_error(exc)}") from None
    except ValidationError as exc:
        raise ValidationError(f"invalid {source}: {exc}") from None

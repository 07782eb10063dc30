"""Server settings: a TOML or JSON file (``otakit server --config FILE``) and ``OTAKIT_*`` variables.

Priority, highest first: values given in code (the CLI's ``--host``/``--port``), environment, file,
defaults. ``OTAKIT_CONFIG`` names the file when the app is started by ``uvicorn --factory``.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from otakit.content import describe_pydantic_error
from otakit.errors import ValidationError

__all__ = ["ServerSettings", "load_settings"]


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OTAKIT_", extra="forbid")

    database_url: str = Field(
        "sqlite:///var/otakit.db", description="sqlite:///rel.db, sqlite:////abs.db or mysql://…"
    )
    files_dir: Path = Field(Path("var/otafiles"), description="root of the local file store")
    files_url: str | None = Field(
        None,
        description=(
            "the file store by URL: file:///abs/path (or file:rel/path) or s3://bucket/prefix;"
            " wins over files_dir when both are set"
        ),
    )
    s3_endpoint: str | None = Field(None, description="the S3 API's URL (unset: AWS)")
    s3_region: str = Field("us-east-1", description="the S3 region")
    s3_access_key: str | None = Field(None, description="the S3 access key (unset: botocore's own lookup)")
    s3_secret_key: str | None = Field(None, description="the S3 secret key")
    s3_public_endpoint: str | None = Field(
        None, description="the S3 URL devices reach, that redirect links are signed for (unset: s3_endpoint)"
    )
    download_mode: Literal["proxy", "redirect"] = Field(
        "proxy",
        description=(
            "proxy: the server streams package files; redirect: 307 to a short-lived presigned link of"
            " the S3 object (the local store always streams)"
        ),
    )
    download_url_seconds: int = Field(
        300, ge=1, le=7 * 86400, description="how long a redirect's presigned link is valid (seconds)"
    )
    deltas_enabled: bool = Field(
        True, description="answer GET /otadelta/…: deltas between versions that carry tree_sha256"
    )
    delta_max_ratio: float = Field(
        0.5,
        gt=0,
        le=1,
        description="a delta larger than this share of the new zip is not kept: devices download the zip",
    )
    delta_concurrency: int = Field(
        1, ge=1, le=64, description="deltas one server process makes at once (the others wait their turn)"
    )
    delta_wait_seconds: float = Field(
        120.0, ge=0, le=3600, description="how long a request waits for a delta being made before a 404"
    )
    upload_lease_seconds: float = Field(
        60.0,
        ge=1,
        le=3600,
        description=(
            "an upload in flight is taken over by recovery in another process when its server has not"
            " renewed it for this long (a dead server on the same host is recovered at once)"
        ),
    )
    upload_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="publisher tokens accepted by PUT /upload (comma-separated)"
    )
    admin_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="operator tokens accepted by the admin API, e.g. release and hold (comma-separated)",
    )
    enroll_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="enrollment tokens accepted by POST /api/v1/devices/register only (comma-separated)",
    )
    device_approval: Literal["auto", "manual"] = Field(
        "auto", description="auto: a new device is accepted at once; manual: pending until accepted"
    )
    heartbeat_seconds: int = Field(
        60, ge=1, le=86400, description="the interval told to devices; online while seen within 3x it"
    )
    allow_anonymous_upload: bool = Field(
        False, description="accept uploads without a token (not for production)"
    )
    max_upload_bytes: int = Field(10 * 1024**3, gt=0, description="largest package file accepted")
    max_content_bytes: int = Field(1024 * 1024, gt=0, description="largest content.json accepted")
    latest_cache_seconds: float = Field(
        5.0,
        ge=0,
        description="how long a process may reuse a /latestVersion answer; any change of versions ends it",
    )
    console_secret: str | None = Field(
        None,
        min_length=32,
        description=(
            "the web console's signing key (sessions, CSRF); when unset, one is generated on first start"
            " and kept in the database, shared by every server on it"
        ),
    )
    console_session_seconds: int = Field(
        8 * 3600, ge=60, le=30 * 86400, description="how long a console login lasts"
    )
    metrics_enabled: bool = Field(
        True, description="count requests and bytes and serve GET /metrics (Prometheus text format)"
    )
    metrics_token: str | None = Field(
        None, min_length=1, description="when set, GET /metrics needs 'Authorization: Bearer <it>'"
    )
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "proxies (addresses, comma-separated, or *) whose X-Forwarded-For/-Proto `otakit server` trusts:"
            " the console's throttle and Secure cookies then see the browser's address and HTTPS"
        ),
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: str = "info"

    @field_validator("files_url")
    @classmethod
    def _check_files_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("file:", "s3://")):
            raise ValueError("files_url must be file:///path or s3://bucket/prefix")
        return value

    @field_validator("upload_tokens", "admin_tokens", "enroll_tokens", "forwarded_allow_ips", mode="before")
    @classmethod
    def _split_tokens(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [token.strip() for token in value.split(",") if token.strip()]
        return value

    @model_validator(mode="after")
    def _separate_tokens(self) -> ServerSettings:
        # Publisher, admin and enrollment tokens are separate (DESIGN.md): one token in two lists
        # would open both.
        kinds = {"upload": self.upload_tokens, "admin": self.admin_tokens, "enrollment": self.enroll_tokens}
        for first, second in (("upload", "admin"), ("upload", "enrollment"), ("admin", "enrollment")):
            if set(kinds[first]) & set(kinds[second]):
                raise ValueError(f"a token cannot be both an {first} token and an {second} token")
        return self


def _file_source(settings_cls: type[BaseSettings], path: Path) -> PydanticBaseSettingsSource:
    """The settings file's source; it parses the file as it is built."""
    is_json = path.suffix.lower() == ".json"
    kind = "JSON" if is_json else "TOML"
    try:
        if is_json:
            return JsonConfigSettingsSource(settings_cls, json_file=path)
        return TomlConfigSettingsSource(settings_cls, toml_file=path)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationError(f"config file {path} is not valid {kind}: {exc}") from None
    except (TypeError, ValueError):  # valid JSON, but pydantic-settings merges its top level as a dict
        raise ValidationError(f"config file {path} must hold a JSON object") from None


def load_settings(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> ServerSettings:
    """Settings from ``config_file`` (or ``$OTAKIT_CONFIG``), the environment and ``overrides``.

    Raises ``ValidationError`` naming the first bad setting, or a missing or unparsable file.
    """
    path = config_file or os.environ.get("OTAKIT_CONFIG") or None
    file_path = Path(path) if path else None
    if file_path is not None and not file_path.is_file():
        raise ValidationError(f"config file {file_path} does not exist")

    class _Settings(ServerSettings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if file_path is not None:
                sources.append(_file_source(settings_cls, file_path))
            return tuple(sources)

    try:
        loaded = _Settings(**overrides)
    except PydanticValidationError as exc:
        raise ValidationError(f"invalid settings: {describe_pydantic_error(exc)}") from None
    return ServerSettings.model_construct(**loaded.model_dump())

"""Server settings: a TOML or JSON file (``otakit server --config FILE``) and ``OTAKIT_*`` variables.

Priority, highest first: values given in code (the CLI's ``--host``/``--port``), environment, file,
defaults. ``OTAKIT_CONFIG`` names the file when the app is started by ``uvicorn --factory``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
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
    files_dir: Path = Field(Path("var/otafiles"), description="root of the file store")
    upload_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="publisher tokens accepted by PUT /upload (comma-separated)"
    )
    allow_anonymous_upload: bool = Field(
        False, description="accept uploads without a token (not for production)"
    )
    max_upload_bytes: int = Field(10 * 1024**3, gt=0, description="largest package file accepted")
    max_content_bytes: int = Field(1024 * 1024, gt=0, description="largest content.json accepted")
    latest_cache_seconds: float = Field(
        5.0, ge=0, description="how long a process may reuse a /latestVersion answer; any upload ends it"
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: str = "info"

    @field_validator("upload_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [token.strip() for token in value.split(",") if token.strip()]
        return value


def load_settings(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> ServerSettings:
    """Settings from ``config_file`` (or ``$OTAKIT_CONFIG``), the environment and ``overrides``.

    Raises ``ValidationError`` naming the first bad setting, or a missing file.
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
                if file_path.suffix.lower() == ".json":
                    sources.append(JsonConfigSettingsSource(settings_cls, json_file=file_path))
                else:
                    sources.append(TomlConfigSettingsSource(settings_cls, toml_file=file_path))
            return tuple(sources)

    try:
        loaded = _Settings(**overrides)
    except PydanticValidationError as exc:
        raise ValidationError(f"invalid settings: {describe_pydantic_error(exc)}") from None
    return ServerSettings.model_construct(**loaded.model_dump())

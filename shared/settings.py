"""Settings, from environment variables only, read and validated once at start."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import EmailStr, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class CommonSettings(BaseSettings):
    """What every service needs: the broker, Redis, logging and the admins."""

    # Empty means unset: `.env` files and compose's `${VAR:-}` pass optional settings as "".
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", env_ignore_empty=True)

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    amqp_ca_file: Path | None = None
    amqp_cert_file: Path | None = None
    amqp_key_file: Path | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"
    log_level: LogLevel = "INFO"
    log_dir: Path | None = None
    admins: Annotated[list[EmailStr], NoDecode] = Field(default_factory=list)
    alert_interval_seconds: float = Field(default=60.0, gt=0)
    metrics_port: int | None = Field(default=None, ge=0, le=65535, description="0 or unset: no metrics port")

    @field_validator("amqp_url")
    @classmethod
    def _amqp_scheme(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
            raise ValueError("must look like amqp://user:password@host:5672/vhost (or amqps://)")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must look like redis://host:6379/0")
        return value

    @field_validator("admins", mode="before")
    @classmethod
    def _split_admins(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def load_settings(cls: type[SettingsT]) -> SettingsT:
    """Read settings, or stop the process with a message naming each bad variable."""
    try:
        return cls()
    except ValidationError as exc:
        for error in exc.errors():
            name = str(error["loc"][0]).upper() if error["loc"] else "?"
            print(f"hotrepos: invalid setting {name}: {error['msg']}", file=sys.stderr)
        raise SystemExit(2) from None

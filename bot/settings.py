"""Typed settings: packaged TOML defaults, the operator's override file, the environment for secrets.

Precedence: explicit arguments > environment (and a ``.env`` file in the working directory) > the override
file (``$IMAGEBOT_CONFIG_FILE``, else ``./config/settings.toml`` if present) > the packaged defaults
(``bot/defaults/settings.toml``, read with importlib.resources so a plain ``pip install`` works anywhere).
The override file is merged over the defaults table by table, key by key: a ``[models."x"]`` row there adds
model x or changes only the fields it names.
A bad value raises ``SettingsError`` whose message is one line naming the variable and what it accepts.
"""

from __future__ import annotations

import contextvars
import importlib.resources
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from bot.catalog import Catalog, ModelSpec, is_openai_api, resolve_inheritance
from bot.errors import ConfigurationError

CONFIG_FILE_ENV = "IMAGEBOT_CONFIG_FILE"
DEFAULTS_RESOURCE = ("bot.defaults", "settings.toml")
# the merged TOML layers (packaged defaults + override file) for the Settings being built
_toml_layers: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("imagebot_toml", default=None)


class SettingsError(ConfigurationError):
    """A setting is missing or invalid; the message is the one line an operator needs."""


class OpenAISettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_timeout: float = Field(300.0, gt=0)
    connect_timeout: float = Field(10.0, gt=0)
    max_retries: int = Field(2, ge=0, le=10)
    retry_after_cap: float = Field(60.0, ge=0)
    max_download_bytes: int = Field(50 * 1024 * 1024, gt=0)
    partial_images: int = Field(0, ge=0, le=3)


class LimitsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_concurrent: int = Field(4, ge=1)
    images_per_minute: float = Field(50, ge=0)
    per_user_jobs: int = Field(3, ge=1)
    max_queue: int = Field(500, ge=1)
    position_interval: float = Field(3.0, ge=0)
    max_result_bytes: int = Field(256 * 1024**2, ge=1024**2)
    pace_window_seconds: float = Field(60.0, gt=0)
    pace_margin_seconds: float = Field(1.0, ge=0)
    admission_lease_seconds: float = Field(10.0, ge=1)


class JobSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dedupe_window: float = Field(120.0, ge=0)
    retention_days: float = Field(30, gt=0)
    confirm_above_usd: float = Field(0.0, ge=0)
    # A job's owner renews its lease every heartbeat; a lease not renewed for lease_seconds (the process died)
    # lets another process take the job over.
    lease_seconds: float = Field(30.0, gt=0)
    heartbeat_seconds: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> JobSettings:
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError("jobs.heartbeat_seconds must be shorter than jobs.lease_seconds")
        return self


class BudgetSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images_per_user_per_day: int = Field(0, ge=0)
    dollars_per_user_per_day: float = Field(0.0, ge=0)
    dollars_per_workspace_per_month: float = Field(0.0, ge=0)
    dollars_per_month: float = Field(0.0, ge=0)


class DiscordSettings(BaseModel):
    """Who may use the bot on Discord (empty lists = everyone)."""

    model_config = ConfigDict(extra="forbid")

    allowed_guilds: list[str] = Field(default_factory=list)
    allowed_channels: list[str] = Field(default_factory=list)
    allowed_roles: list[str] = Field(default_factory=list)
    # None ("auto"): DMs are allowed while no allow-list is set, refused once one is (see adapters/common/access.py)
    allow_dms: bool | None = None
    others_may_press: bool = False
    private_by_default: bool = False  # /imagine results only their requester sees until published
    private_guilds: list[str] = Field(default_factory=list)  # servers where private is the default


class SlackSettings(BaseModel):
    """Who may use the bot on Slack (empty lists = everyone)."""

    model_config = ConfigDict(extra="forbid")

    allowed_workspaces: list[str] = Field(default_factory=list)
    allowed_channels: list[str] = Field(default_factory=list)
    allowed_users: list[str] = Field(default_factory=list)
    others_may_press: bool = False
    admins: list[str] = Field(default_factory=list)  # user ids who may use /imagebot-admin besides workspace admins
    private_by_default: bool = False  # /imagine results go to the requester's DM until shared
    private_workspaces: list[str] = Field(default_factory=list)  # workspaces where private is the default


class ImagingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_input_bytes: int = Field(50 * 1024 * 1024, gt=0)
    max_input_pixels: int = Field(50_000_000, gt=0)
    max_input_frames_checked: int = Field(1, ge=1)
    input_max_edge: int = Field(2048, ge=64)
    square_inputs: Literal["pad", "crop"] = "pad"


class Settings(BaseSettings):
    """Every setting of the bot. Secrets are ``SecretStr`` and never printed unmasked."""

    model_config = SettingsConfigDict(
        env_prefix="IMAGEBOT_",
        env_nested_delimiter="__",
        env_file=".env",
        env_ignore_empty=True,
        extra="ignore",
        validate_by_name=True,
        validate_by_alias=True,
    )

    # OpenAI (or any compatible server)
    openai_api_key: SecretStr | None = Field(None, validation_alias=AliasChoices("OPENAI_API_KEY"))
    openai_base_url: str = Field(
        "https://api.openai.com/v1", validation_alias=AliasChoices("OPENAI_BASE_URL", "openai_base_url")
    )
    openai_org_id: SecretStr | None = Field(None, validation_alias=AliasChoices("OPENAI_ORG_ID"))
    openai_project_id: SecretStr | None = Field(None, validation_alias=AliasChoices("OPENAI_PROJECT_ID"))
    provider: Literal["auto", "openai", "offline"] = "auto"

    # Chat platforms
    discord_token: SecretStr | None = Field(None, validation_alias=AliasChoices("DISCORD_TOKEN"))
    discord_api_base_url: str | None = Field(None, validation_alias=AliasChoices("DISCORD_API_BASE_URL"))
    discord_gateway_url: str | None = Field(None, validation_alias=AliasChoices("DISCORD_GATEWAY_URL"))
    # this process's gateway shards: IMAGEBOT_DISCORD_SHARD_COUNT=4, IMAGEBOT_DISCORD_SHARD_IDS=0,1 (unset: one session)
    discord_shard_count: int | None = Field(None, ge=1, le=100_000)
    discord_shard_ids: Annotated[tuple[int, ...] | None, NoDecode] = None
    slack_bot_token: SecretStr | None = Field(None, validation_alias=AliasChoices("SLACK_BOT_TOKEN"))
    slack_app_token: SecretStr | None = Field(None, validation_alias=AliasChoices("SLACK_APP_TOKEN"))
    slack_signing_secret: SecretStr | None = Field(None, validation_alias=AliasChoices("SLACK_SIGNING_SECRET"))
    slack_api_url: str | None = Field(None, validation_alias=AliasChoices("SLACK_API_URL"))

    # The process
    web_host: str = "127.0.0.1"
    web_port: int = Field(8080, ge=0, le=65535)
    # the playground's shared password (HTTP Basic auth); required when web_host is not a loopback address
    web_password: SecretStr | None = Field(None, validation_alias=AliasChoices("IMAGEBOT_WEB_PASSWORD", "web_password"))
    data_dir: Path = Path("./data")
    # the job database on PostgreSQL (postgresql://user:password@host:port/db); unset: SQLite under data_dir
    database_url: SecretStr | None = Field(None, validation_alias=AliasChoices("IMAGEBOT_DATABASE_URL", "database_url"))
    # admission shared by several processes (redis://[:password@]host:port/db, rediss://, unix://); unset: in-process
    redis_url: SecretStr | None = Field(None, validation_alias=AliasChoices("IMAGEBOT_REDIS_URL", "redis_url"))
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    shutdown_grace: float = Field(10.0, ge=0)  # seconds running jobs get to finish on SIGTERM

    # Images
    default_model: str = "gpt-image-2"
    default_n: int = Field(1, ge=1, le=10)
    variation_prompt: str = Field(
        "Create a variation of this image: keep its subject, composition and style, change the details.",
        min_length=1,
    )
    variation_prompt_subtle: str = Field(
        "Create a subtle variation of this image: keep its subject, composition, colours and style; change only "
        "small details.",
        min_length=1,
    )
    variation_prompt_strong: str = Field(
        "Create a bold variation of this image: keep its subject, but feel free to change the composition, pose, "
        "lighting and details.",
        min_length=1,
    )
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    imaging: ImagingSettings = Field(default_factory=ImagingSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    discord: DiscordSettings = Field(default_factory=DiscordSettings)
    slack: SlackSettings = Field(default_factory=SlackSettings)
    budgets: BudgetSettings = Field(default_factory=BudgetSettings)
    aliases: dict[str, str] = Field(default_factory=dict)
    models: dict[str, ModelSpec] = Field(default_factory=dict)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("web_password", "database_url", "redis_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value else value

    @field_validator("discord_shard_ids", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = [part.strip() for part in value.split(",")]
            if not value.strip() or not all(part.isdigit() for part in parts):
                raise ValueError("must be shard numbers separated by commas, e.g. 0,1")
            return tuple(int(part) for part in parts)
        return value

    @model_validator(mode="after")
    def _shards_fit(self) -> Settings:
        ids, count = self.discord_shard_ids, self.discord_shard_count
        if ids is None:
            return self
        if count is None:
            raise ValueError("discord_shard_ids: set IMAGEBOT_DISCORD_SHARD_COUNT too (the total number of shards)")
        if not ids:
            raise ValueError("discord_shard_ids: list at least one shard, e.g. 0,1")
        outside = sorted({i for i in ids if not 0 <= i < count})
        if outside:
            raise ValueError(
                f"discord_shard_ids: shard {outside[0]} is outside 0..{count - 1} (the shard count is {count})"
            )
        if len(set(ids)) != len(ids):
            raise ValueError("discord_shard_ids: each shard may appear only once")
        return self

    @property
    def discord_shards(self) -> tuple[int, ...] | None:
        """This process's shard ids (all of them when only the count is set); None: one unsharded session."""
        if self.discord_shard_count is None:
            return None
        return self.discord_shard_ids or tuple(range(self.discord_shard_count))

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a PostgreSQL URL: postgresql://user:password@host:5432/database")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a Redis URL: redis://[:password@]host:6379/0 (or rediss://, unix://)")
        return value

    @field_validator("openai_base_url", "discord_api_base_url", "slack_api_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("models", mode="before")
    @classmethod
    def _expand_like(cls, value: Any) -> Any:
        return resolve_inheritance(value) if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _default_model_known(self) -> Settings:
        if not self.models:
            raise ValueError("models: the model capability table is empty")
        real = self.aliases.get(self.default_model, self.default_model)
        if real not in self.models:
            raise ValueError(
                f"default_model: '{self.default_model}' is not in the model table; "
                f"choose one of {', '.join(sorted(self.models))}"
            )
        for alias, target in self.aliases.items():
            if target not in self.models:
                raise ValueError(f"aliases: '{alias}' points to unknown model '{target}'")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        layers = _toml_layers.get()
        if layers is not None:
            sources.append(InitSettingsSource(settings_cls, init_kwargs=layers))
        return tuple(sources)

    # --- derived views ------------------------------------------------------------------------------

    @property
    def provider_name(self) -> Literal["openai", "offline"]:
        if self.provider == "auto":
            return "openai" if self.openai_api_key else "offline"
        return self.provider

    def catalog(self) -> Catalog:
        return Catalog(self.models, self.aliases, self.default_model, openai_api=is_openai_api(self.openai_base_url))

    def secret_values(self) -> list[str]:
        """Every configured secret, for the redactor."""
        fields = (
            self.openai_api_key,
            self.openai_org_id,
            self.openai_project_id,
            self.discord_token,
            self.slack_bot_token,
            self.slack_app_token,
            self.slack_signing_secret,
            self.web_password,
        )
        return [f.get_secret_value() for f in fields if f is not None] + self.database_passwords()

    def database_passwords(self) -> list[str]:
        """The password(s) inside IMAGEBOT_DATABASE_URL and IMAGEBOT_REDIS_URL (user:password@, or ?password=).

        Only these go to the redactor: the whole URL would make it mask words such as "post" and the user name.
        """
        found: list[str] = []
        for url in (self.database_url, self.redis_url):
            if url is None:
                continue
            parts = urlsplit(url.get_secret_value())
            found += [parts.password] if parts.password else []
            found += parse_qs(parts.query).get("password", [])
        return [unquote(secret) for secret in found if secret]

    def masked(self) -> dict[str, str]:
        """A flat, printable view with every secret masked (for ``imagebot check``)."""
        out: dict[str, str] = {}
        for name, value in self.model_dump(exclude={"models", "aliases"}).items():
            if isinstance(value, dict):
                for sub, subvalue in value.items():
                    out[f"{name}.{sub}"] = str(subvalue)
            elif isinstance(value, SecretStr):
                out[name] = _mask(value.get_secret_value())
            else:
                out[name] = "" if value is None else str(value)
        out["models"] = ", ".join(self.models)
        return out


def _is_secret_field(loc: tuple[Any, ...]) -> bool:
    """Whether the setting at ``loc`` is declared as a SecretStr (its value is never echoed in an error)."""
    if not loc:
        return False
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names = {field_name, *(alias.choices if isinstance(alias, AliasChoices) else [])}
        if str(loc[0]) in names:
            return "SecretStr" in str(field.annotation)
    return False


def _mask(secret: str) -> str:
    return f"set ({len(secret)} characters)" if secret else "not set"


def default_config_file() -> Path | None:
    """The operator's override file: ``$IMAGEBOT_CONFIG_FILE``, else ``./config/settings.toml`` if present."""
    explicit = os.environ.get(CONFIG_FILE_ENV)
    if explicit:
        return Path(explicit)
    candidate = Path.cwd() / "config" / "settings.toml"
    return candidate if candidate.is_file() else None


def packaged_defaults() -> dict[str, Any]:
    """The defaults that ship inside the package (bot/defaults/settings.toml)."""
    package, name = DEFAULTS_RESOURCE
    return tomllib.loads(importlib.resources.files(package).joinpath(name).read_text(encoding="utf-8"))


def merge_tables(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``: tables merge key by key (recursively), anything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = merge_tables(current, value)
        else:
            merged[key] = value
    return merged


def _toml_settings(path: Path | None) -> dict[str, Any]:
    defaults = packaged_defaults()
    if path is None:
        return defaults
    try:
        override = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"{CONFIG_FILE_ENV}: cannot read {path}: {exc}") from None
    return merge_tables(defaults, override)


def _env_name(loc: tuple[Any, ...]) -> str:
    top = str(loc[0]) if loc else ""
    if top.startswith("IMAGEBOT_"):  # reported under its environment alias already
        return top
    field = Settings.model_fields.get(top)
    alias = field.validation_alias if field else None
    if isinstance(alias, AliasChoices) and str(alias.choices[0]).isupper():
        return str(alias.choices[0])
    parts = [str(p) for p in loc if not isinstance(p, int)]
    return "IMAGEBOT_" + "__".join(parts).upper()


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read and validate all settings, or raise ``SettingsError`` with one actionable line."""
    path = config_file if config_file is not None else default_config_file()
    if path is not None and not path.is_file():
        raise SettingsError(f"{CONFIG_FILE_ENV}: no settings file at {path}")
    token = _toml_layers.set(_toml_settings(path))
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        reason = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        loc = tuple(first.get("loc", ()))
        if not loc and ": " in reason:  # whole-model checks say "field: why"
            field_name, reason = reason.split(": ", 1)
            loc = (field_name,)
        name = _env_name(loc)
        shown = first.get("input")
        secret = _is_secret_field(loc) or any(word in name for word in ("KEY", "TOKEN", "SECRET", "PASSWORD"))
        got = f" (got {shown!r})" if isinstance(shown, str | int | float) and not secret else ""
        raise SettingsError(f"setting {name}: {reason}{got}", detail=str(exc)) from None
    except (OSError, ValueError) as exc:  # e.g. a malformed .env or environment JSON
        raise SettingsError(f"cannot read the settings: {exc}") from None
    finally:
        _toml_layers.reset(token)

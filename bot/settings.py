"""Typed settings from the environment and an optional ``.env`` file (pydantic-settings).

Every check that can fail names the environment variable, the bad value and what is accepted, so
the CLI can print it as one line and exit 2 (see :class:`~bot.errors.ConfigError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import platformdirs
from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.busy import BusyPolicy
from bot.errors import ConfigError
from bot.model_spec import (
    check_embed_model_spec,
    check_image_model_spec,
    check_text_model_spec,
    check_vision_model_spec,
    check_yandex_credentials,
)
from bot.observe import logs
from bot.observe.server import parse_metrics_listen
from bot.redis.connect import REDIS_SCHEMES, check_url
from bot.urls import grpc_target, mask_url

#: The Redis schemes a conversation store takes: every one connect() takes.
REDIS_STORE_SCHEMES = REDIS_SCHEMES
STORE_SCHEMES = ("sqlite", *REDIS_STORE_SCHEMES, "memory")
IMAGE_CLASSIFIERS = ("auto", "rules", "model", "yandex")
STORE_ACCEPTED = (
    "use sqlite:///PATH, redis://HOST:PORT/DB (or rediss://), "
    "redis+sentinel://HOST:PORT[,...]/SERVICE[/DB], redis+cluster://HOST:PORT[,...], "
    "unix:///PATH/redis.sock[?db=N] or memory://"
)


def default_home() -> Path:
    return Path(platformdirs.user_data_dir("fmbot", appauthor=False))


def shipped_prompts_dir() -> Path:
    """The templates that come with fmbot: ``prompts/`` in a checkout, bundled in a wheel."""
    package = Path(__file__).resolve().parent
    bundled = package / "_shipped_prompts"
    return bundled if bundled.is_dir() else package.parent / "prompts"


class Settings(BaseSettings):
    """fmbot's settings. Environment variables win over ``.env``; both over defaults."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    home: Path = Field(default_factory=default_home, alias="FMBOT_HOME")
    text_model: str = Field(default="local:smollm2", alias="FMBOT_TEXT_MODEL")
    image_model: str | None = Field(default=None, alias="FMBOT_IMAGE_MODEL")
    #: The model that answers turns carrying pictures (None: pictures get a setup hint).
    vision_model: str | None = Field(default=None, alias="FMBOT_VISION_MODEL")
    #: Pictures are downscaled to at most this many pixels on the longest side before sending.
    #: The vision model's context window (tokens): services do not report it; vision models
    #: take 32k and more, and each picture counts as 1,500 (bot.models.base.picture_tokens).
    vision_context_tokens: int = Field(default=32768, ge=2048, alias="FMBOT_VISION_CONTEXT_TOKENS")
    vision_max_side: int = Field(default=1568, ge=64, le=8192, alias="FMBOT_VISION_MAX_SIDE")
    image_classifier: str = Field(default="auto", alias="FMBOT_IMAGE_CLASSIFIER")
    #: The embedder of knowledge bases (bot/kb/embedders.py); an index refuses another one.
    embed_model: str = Field(default="local:e5", alias="FMBOT_EMBED_MODEL")
    #: One SQLite file per knowledge base; default FMBOT_HOME/kb.
    kb_dir: Path | None = Field(default=None, alias="FMBOT_KB_DIR")
    rewrite_image_prompts: bool = Field(default=True, alias="FMBOT_REWRITE_IMAGE_PROMPTS")
    store: str | None = Field(default=None, alias="FMBOT_STORE")
    prompts_dir: Path = Field(default_factory=shipped_prompts_dir, alias="FMBOT_PROMPTS_DIR")
    default_mode: str = Field(default="default", alias="FMBOT_DEFAULT_MODE")
    temperature: float | None = Field(default=None, ge=0, le=2, alias="FMBOT_TEMPERATURE")
    max_tokens: int = Field(default=512, gt=0, alias="FMBOT_MAX_TOKENS")
    context_tokens: int = Field(default=4096, ge=256, alias="FMBOT_CONTEXT_TOKENS")
    local_threads: int | None = Field(default=None, gt=0, alias="FMBOT_LOCAL_THREADS")
    #: RAM for the local model's saved KV states of conversations other than the current one.
    local_cache_mb: int = Field(default=256, ge=0, alias="FMBOT_LOCAL_CACHE_MB")
    #: Exchanges (a message and its reply) kept per chat and read for the prompt.
    history_turns: int = Field(default=100, ge=1, alias="FMBOT_HISTORY_TURNS")
    history_ttl: str = Field(default="", alias="FMBOT_HISTORY_TTL")
    busy_policy: BusyPolicy = Field(default=BusyPolicy.QUEUE, alias="FMBOT_BUSY_POLICY")
    redis_prefix: str = Field(
        default="fmbot", pattern=r"^[A-Za-z0-9_.:-]+$", alias="FMBOT_REDIS_PREFIX"
    )
    queue_url: str | None = Field(default=None, alias="FMBOT_QUEUE_URL")
    queue_partitions: int = Field(default=16, ge=1, le=4096, alias="FMBOT_QUEUE_PARTITIONS")
    queue_lease_ms: int = Field(default=10_000, ge=1_000, alias="FMBOT_QUEUE_LEASE_MS")
    #: Memory for a queue worker's copy of the chats it answers (bot/queue/cache.py).
    worker_cache_mb: int = Field(default=256, ge=1, alias="FMBOT_WORKER_CACHE_MB")
    rate_limit: int = Field(default=0, ge=0, alias="FMBOT_RATE_LIMIT")
    daily_tokens: int = Field(default=0, ge=0, alias="FMBOT_DAILY_TOKENS")
    #: Key of the HMAC that names users in the Redis limit keys (bot.limits.pseudonym).
    pseudonym_key: SecretStr | None = Field(default=None, alias="FMBOT_PSEUDONYM_KEY")
    #: HOST:PORT serving Prometheus metrics at /metrics; empty: no metrics (bot/observe).
    metrics_listen: str = Field(default="", alias="FMBOT_METRICS_LISTEN")
    #: Log lines as ``text`` or ``json`` (one object a line), at FMBOT_LOG_LEVEL (empty: the
    #: command's default, WARNING; INFO for workers).
    log_format: str = Field(default="text", alias="FMBOT_LOG_FORMAT")
    log_level: str = Field(default="", alias="FMBOT_LOG_LEVEL")

    # Remote backends (issue 3). Secrets are SecretStr so they never print by accident.
    yandex_api_key: SecretStr | None = Field(default=None, alias="YANDEX_API_KEY")
    yandex_iam_token: SecretStr | None = Field(default=None, alias="YANDEX_IAM_TOKEN")
    yandex_folder_id: str | None = Field(default=None, alias="YANDEX_FOLDER_ID")
    yandex_fm_url: str = Field(default="https://llm.api.cloud.yandex.net", alias="YANDEX_FM_URL")
    yandex_operations_url: str = Field(
        default="https://operation.api.cloud.yandex.net", alias="YANDEX_OPERATIONS_URL"
    )
    #: gRPC endpoints of batch mode (`fmbot batch run --mode batch`): the Dataset, Batch
    #: Inference and text generation services, and long-running operations. ``grpcs://`` is
    #: TLS, ``grpc://`` plaintext (a test server).
    yandex_grpc_url: str = Field(
        default="grpcs://llm.api.cloud.yandex.net:443", alias="YANDEX_GRPC_URL"
    )
    yandex_operations_grpc_url: str = Field(
        default="grpcs://operation.api.cloud.yandex.net:443", alias="YANDEX_OPERATIONS_GRPC_URL"
    )
    openai_api_key: SecretStr | None = Field(default=None, alias="OPENAI_API_KEY")
    openai_base_url: str = Field(default="https://api.openai.com/v1", alias="OPENAI_BASE_URL")

    @model_validator(mode="after")
    def _default_store(self) -> Settings:
        if not self.store:
            self.store = f"sqlite:///{self.home / 'fmbot.db'}"
        if self.kb_dir is None or not str(self.kb_dir).strip():
            self.kb_dir = self.home / "kb"
        return self

    @property
    def knowledge_dir(self) -> Path:
        assert self.kb_dir is not None  # set by _default_store
        return self.kb_dir

    @property
    def history_messages(self) -> int:
        """FMBOT_HISTORY_TURNS in stored messages: an exchange is two (user and assistant)."""
        return 2 * self.history_turns

    @property
    def store_url(self) -> str:
        assert self.store is not None  # set by _default_store
        return self.store

    def validate_all(self) -> None:
        """Check what pydantic cannot: schemes, model names, readable directories."""
        scheme = urlsplit(self.store_url).scheme
        if scheme not in STORE_SCHEMES:
            raise ConfigError("FMBOT_STORE", mask_url(self.store_url), STORE_ACCEPTED)
        if scheme == "sqlite" and not urlsplit(self.store_url).path.lstrip("/"):
            raise ConfigError("FMBOT_STORE", self.store_url, STORE_ACCEPTED)
        if scheme in REDIS_STORE_SCHEMES:
            check_url(self.store_url, "FMBOT_STORE")
        if queue := (self.queue_url or "").strip():
            check_url(queue, "FMBOT_QUEUE_URL")
        if self.metrics_listen.strip():
            parse_metrics_listen(self.metrics_listen)
        if self.log_format not in logs.FORMATS:
            raise ConfigError("FMBOT_LOG_FORMAT", self.log_format, "use text or json")
        if self.log_level.strip() and self.log_level.strip().upper() not in logs.LEVELS:
            raise ConfigError(
                "FMBOT_LOG_LEVEL", self.log_level, f"use {', '.join(logs.LEVELS)} (or empty)"
            )
        check_text_model_spec(self.text_model)
        if self.image_model:
            check_image_model_spec(self.image_model)
        if self.vision_model:
            check_vision_model_spec(self.vision_model)
        check_embed_model_spec(self.embed_model)
        self.history_ttl_seconds  # noqa: B018 - raises ConfigError when malformed
        if self.image_classifier not in IMAGE_CLASSIFIERS:
            raise ConfigError(
                "FMBOT_IMAGE_CLASSIFIER",
                self.image_classifier,
                f"use {', '.join(IMAGE_CLASSIFIERS)}",
            )
        grpc_target(self.yandex_grpc_url, "YANDEX_GRPC_URL")
        grpc_target(self.yandex_operations_grpc_url, "YANDEX_OPERATIONS_GRPC_URL")
        if self.uses_yandex or self.embed_model.startswith("yandex:"):
            check_yandex_credentials(  # fail fast, before any request
                (self.yandex_folder_id or "").strip(),
                has_key=bool(self.yandex_api_key and self.yandex_api_key.get_secret_value()),
                has_token=bool(self.yandex_iam_token and self.yandex_iam_token.get_secret_value()),
            )
        d = self.prompts_dir
        if not d.is_dir():
            raise ConfigError(
                "FMBOT_PROMPTS_DIR", str(d), "give a readable directory of template files"
            )
        try:
            next(iter(d.iterdir()), None)
        except OSError as exc:
            raise ConfigError(
                "FMBOT_PROMPTS_DIR", str(d), f"the directory cannot be read ({exc.strerror})"
            ) from exc

    @property
    def history_ttl_seconds(self) -> float | None:
        """FMBOT_HISTORY_TTL as seconds: ``3600``, ``90m``, ``12h``, ``30d``; empty: never."""
        return parse_duration(self.history_ttl)

    @property
    def uses_yandex(self) -> bool:
        specs = (self.text_model, self.image_model or "", self.vision_model or "")
        return any(spec.startswith("yandex:") for spec in specs)

    def public_view(self) -> dict[str, Any]:
        """Effective settings keyed by environment variable, secrets masked."""
        view: dict[str, Any] = {}
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                shown: Any = "********" if value.get_secret_value() else ""
            elif isinstance(value, str) and "://" in value:
                shown = mask_url(value)
            else:
                shown = value
            view[field.alias or name.upper()] = shown
        return view


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_MAX_TTL = 10 * 365 * 86400


def parse_duration(text: str) -> float | None:
    value = text.strip().lower()
    if not value or value in ("0", "never", "none"):
        return None
    unit = value[-1] if value[-1] in _UNITS else "s"
    number = value[:-1] if value[-1] in _UNITS else value
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        seconds = -1
    if not (0 < seconds <= _MAX_TTL):  # also rejects nan and inf
        raise ConfigError(
            "FMBOT_HISTORY_TTL",
            text,
            "give seconds or a duration like 90m, 12h, 30d (empty: never)",
        )
    return seconds


def load_settings(**overrides: Any) -> Settings:
    """Build and fully validate settings; raise ConfigError naming the first bad setting."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        alias = str(err["loc"][0]) if err["loc"] else "settings"
        raise ConfigError(alias, err.get("input"), err["msg"]) from None
    settings.validate_all()
    return settings


class _LogSettings(BaseSettings):
    model_config = Settings.model_config

    log_format: str | None = Field(default=None, alias="FMBOT_LOG_FORMAT")
    log_level: str | None = Field(default=None, alias="FMBOT_LOG_LEVEL")


def log_settings() -> tuple[str | None, str | None]:
    """FMBOT_LOG_FORMAT and FMBOT_LOG_LEVEL read as the settings read them (the environment,
    then ``.env``), alone: for the lines written before the settings are loaded, a
    configuration error among them. ``(None, None)`` if even they cannot be read."""
    try:
        early = _LogSettings()
    except Exception:  # an unreadable .env: load_settings reports it
        return None, None
    return early.log_format, early.log_level

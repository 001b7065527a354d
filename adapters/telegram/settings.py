"""Telegram channel settings from the environment (and ``.env``), checked up front.

Every problem is a :class:`~bot.errors.ConfigError` naming the variable; the token itself is
never part of a message.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.errors import ConfigError

DEFAULT_API_URL = "https://api.telegram.org"
PRIVATE_EDIT_INTERVAL = 1.0
GROUP_EDIT_INTERVAL = 3.0

_TOKEN = re.compile(r"^\d+:[\w-]+$")
_ENTRY = re.compile(r"^(\d+|@?[A-Za-z0-9_]{1,32})$")
_USERS_ACCEPTED = "give comma-separated numeric user ids or @usernames, e.g. 12345,@alice"
_TOKEN_HINT = "set TELEGRAM_BOT_TOKEN to the token from @BotFather"


def _split_entries(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list | tuple):
        items = [str(v) for v in value]
    else:
        raise ValueError("expected a comma-separated list")
    return tuple(i.strip() for i in items if i.strip())


class TelegramSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    bot_token: SecretStr | None = Field(default=None, alias="TELEGRAM_BOT_TOKEN")
    api_url: str = Field(default=DEFAULT_API_URL, alias="TELEGRAM_API_URL")
    #: The server at api_url runs with ``--local``: getFile names files on its disk, which the
    #: bot reads there (such a server serves no file downloads over HTTP).
    api_local: bool = Field(default=False, alias="TELEGRAM_API_LOCAL")
    #: (the server's --dir as it names it, where this bot finds it): for a server whose disk the
    #: bot sees at another path (containers); None: the same paths.
    api_local_files: Annotated[tuple[Path, Path] | None, NoDecode] = Field(
        default=None, alias="TELEGRAM_API_LOCAL_FILES"
    )
    # NoDecode: a plain comma-separated list in the environment, not JSON.
    allowed_users: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), alias="TELEGRAM_ALLOWED_USERS"
    )
    admins: Annotated[tuple[str, ...], NoDecode] = Field(default=(), alias="TELEGRAM_ADMINS")
    #: Seconds between preview updates of one chat; None: 1 s in private chats, 3 s in groups.
    edit_interval: float | None = Field(default=None, gt=0, alias="TELEGRAM_EDIT_INTERVAL")
    #: Webhook secret; derived from the token when unset (stable across restarts).
    webhook_secret: SecretStr | None = Field(default=None, alias="TELEGRAM_WEBHOOK_SECRET")
    #: How long a shutdown waits for replies in progress before cutting them off.
    shutdown_grace: float = Field(default=30.0, ge=0, alias="TELEGRAM_SHUTDOWN_GRACE")

    @field_validator("allowed_users", "admins", mode="before")
    @classmethod
    def _entries(cls, value: object) -> tuple[str, ...]:
        entries = _split_entries(value)
        for entry in entries:
            if not _ENTRY.match(entry):
                raise ValueError(f"{entry!r} is neither a user id nor a username")
        return entries

    @field_validator("api_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("api_local_files", mode="before")
    @classmethod
    def _local_files(cls, value: object) -> tuple[Path, Path] | None:
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise ValueError("expected SERVER_DIR:BOT_DIR")
        server, sep, local = value.partition(":")
        paths = Path(server.strip()), Path(local.strip())
        if not sep or not all(p.is_absolute() for p in paths):
            raise ValueError("expected SERVER_DIR:BOT_DIR, two absolute paths")
        return paths

    @property
    def token(self) -> str:
        assert self.bot_token is not None  # checked by load_telegram_settings
        return self.bot_token.get_secret_value()

    def interval_for(self, private: bool) -> float:
        if self.edit_interval is not None:
            return self.edit_interval
        return PRIVATE_EDIT_INTERVAL if private else GROUP_EDIT_INTERVAL

    def secret_token(self) -> str:
        """The X-Telegram-Bot-Api-Secret-Token value (1–256 of ``A-Za-z0-9_-``)."""
        if self.webhook_secret is not None and self.webhook_secret.get_secret_value():
            return self.webhook_secret.get_secret_value()
        # Derived, not random: a restarted bot accepts updates Telegram queued under the old one.
        digest = hmac.new(self.token.encode(), b"fmbot-webhook-secret", hashlib.sha256)
        return digest.hexdigest()


_ACCEPTED = {
    "TELEGRAM_ALLOWED_USERS": _USERS_ACCEPTED,
    "TELEGRAM_ADMINS": _USERS_ACCEPTED,
    "TELEGRAM_API_URL": "give the Bot API server's base URL, e.g. https://api.telegram.org",
    "TELEGRAM_API_LOCAL": "give true when the Bot API server runs with --local, else false",
    "TELEGRAM_API_LOCAL_FILES": (
        "give the server's --dir and where this bot sees it, as two absolute paths, e.g. "
        "/var/lib/telegram-bot-api:/srv/telegram-bot-api (and set TELEGRAM_API_LOCAL=true)"
    ),
    "TELEGRAM_EDIT_INTERVAL": "give a positive number of seconds, e.g. 1.5",
    "TELEGRAM_SHUTDOWN_GRACE": "give a number of seconds (0 or more)",
}
_SECRET = {"TELEGRAM_BOT_TOKEN", "TELEGRAM_WEBHOOK_SECRET"}


def load_telegram_settings(**overrides: Any) -> TelegramSettings:
    """Build and check the settings; raise ConfigError naming the first bad variable."""
    try:
        settings = TelegramSettings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        alias = str(err["loc"][0]) if err["loc"] else "settings"
        shown = "********" if alias in _SECRET else err.get("input")
        raise ConfigError(alias, shown, _ACCEPTED.get(alias, err["msg"])) from None
    if settings.api_local_files is not None and not settings.api_local:
        server, local = settings.api_local_files
        raise ConfigError(
            "TELEGRAM_API_LOCAL_FILES",
            f"{server}:{local}",
            "it maps the files of a --local Bot API server: set TELEGRAM_API_LOCAL=true too",
        )
    token = settings.bot_token.get_secret_value() if settings.bot_token else ""
    if not token:
        raise ConfigError("TELEGRAM_BOT_TOKEN", None, _TOKEN_HINT)
    if not _TOKEN.match(token):
        raise ConfigError(
            "TELEGRAM_BOT_TOKEN", "********", "it should look like 123456789:AAE...; " + _TOKEN_HINT
        )
    return settings

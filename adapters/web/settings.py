"""Where ``fmbot web`` listens and who may use it, checked before anything starts.

Loopback needs no token: whoever can reach it is on this machine, like the console's user. Any
other address needs FMBOT_WEB_TOKEN; the token is never part of a message or a log line.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.errors import ConfigError
from bot.model_spec import check_text_model_spec

DEFAULT_LISTEN = "127.0.0.1:8000"
MIN_TOKEN = 16  # characters: a token someone could guess protects nothing
_LISTEN_ACCEPTED = "give HOST:PORT, e.g. 127.0.0.1:8000 or [::1]:8000"
_ORIGIN_ACCEPTED = (
    "give the address the browser shows, scheme and host only, e.g. https://bot.example.com"
)
LOOPBACK_NAMES = frozenset({"localhost"})
DEFAULT_PORTS = {"http": 80, "https": 443}


class WebSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    token: SecretStr | None = Field(default=None, alias="FMBOT_WEB_TOKEN")
    #: Text models the playground offers besides FMBOT_TEXT_MODEL (and FMBOT_VISION_MODEL):
    #: comma-separated specs. NoDecode: a plain list in the environment, not JSON.
    models: Annotated[tuple[str, ...], NoDecode] = Field(default=(), alias="FMBOT_WEB_MODELS")
    #: The eval suites the playground's Evaluate view offers; default FMBOT_HOME/evals.
    suites: Path | None = Field(default=None, alias="FMBOT_WEB_SUITES")
    #: The page's origin when a reverse proxy serves it (https://bot.example.com): the one a
    #: POST's Origin may name besides the address uvicorn sees; https makes the cookie Secure.
    origin: str | None = Field(default=None, alias="FMBOT_WEB_ORIGIN")

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, value: object) -> tuple[str, ...]:
        if isinstance(value, str):
            items = value.split(",")
        elif isinstance(value, list | tuple):
            items = [str(v) for v in value]
        else:
            items = []
        return tuple(i.strip() for i in items if i.strip())


def parse_origin(origin: str) -> str:
    """``scheme://host[:port]`` as browsers send it in Origin; ConfigError names the setting."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port  # ValueError when not a port
    except ValueError:
        raise ConfigError("FMBOT_WEB_ORIGIN", origin, _ORIGIN_ACCEPTED) from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise ConfigError("FMBOT_WEB_ORIGIN", origin, _ORIGIN_ACCEPTED)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is not None and port != DEFAULT_PORTS[parts.scheme]:  # browsers leave it out
        host += f":{port}"
    return f"{parts.scheme}://{host}"


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as (host, port); ConfigError names --listen."""
    host, sep, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("--listen", listen, _LISTEN_ACCEPTED)
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere


def load_web_settings(host: str) -> WebSettings:
    """The settings for listening on ``host``; ConfigError when it needs a token it lacks."""
    web = WebSettings()
    token = web.token.get_secret_value() if web.token is not None else ""
    if web.token is not None and len(token) < MIN_TOKEN:
        # The value itself is never shown: it is a secret even when it is a bad one.
        raise ConfigError(
            "FMBOT_WEB_TOKEN",
            "(hidden)",
            f"use at least {MIN_TOKEN} random characters, e.g. from `openssl rand -hex 24`",
        )
    if not token and not is_loopback(host):
        raise ConfigError(
            "FMBOT_WEB_TOKEN",
            None,
            f"listening on {host} lets other machines in: set FMBOT_WEB_TOKEN to a long random "
            "secret (`openssl rand -hex 24`), or listen on 127.0.0.1",
        )
    if web.origin is not None and web.origin.strip():
        web.origin = parse_origin(web.origin)
        hostname = urlsplit(web.origin).hostname or ""
        if not token and not is_loopback(hostname):
            # A proxy forwarding the world to a loopback server would bypass the rule above.
            raise ConfigError(
                "FMBOT_WEB_TOKEN",
                None,
                f"FMBOT_WEB_ORIGIN={web.origin} serves the pages beyond this machine: set "
                "FMBOT_WEB_TOKEN to a long random secret (`openssl rand -hex 24`)",
            )
    else:
        web.origin = None
    for spec in web.models:
        try:
            check_text_model_spec(spec)
        except ConfigError as exc:
            raise ConfigError("FMBOT_WEB_MODELS", spec, exc.accepted) from None
    return web

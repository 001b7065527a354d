"""URLs as fmbot shows them: in errors, logs and ``fmbot config``, with their secrets hidden."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from bot.errors import ConfigError
from bot.secret_names import WORDS

GRPC_ACCEPTED = "use grpcs://HOST:PORT (TLS) or grpc://HOST:PORT (plaintext, e.g. a test server)"

#: Query parameters that hold secrets: any name containing a secret's word (bot.secret_names),
#: so that ``sentinel_password=``, ``api_key=`` and ``access_token=`` are hidden too.
_SECRET_PARAMS = re.compile(rf"(^|&)([^=&]*(?:{WORDS})[^=&]*=)[^&]*", re.IGNORECASE)


def mask_url(url: str) -> str:
    """Hide passwords in URLs: ``user:password@host`` and ``?password=...`` query parameters."""
    parts = urlsplit(url)
    query = _SECRET_PARAMS.sub(r"\1\2****", parts.query)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:****@{host}"
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # nothing to hide: show it exactly as given (urlunsplit drops an empty "//")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def grpc_target(url: str, setting: str) -> tuple[str, bool]:
    """``(host:port, tls)`` of a ``grpcs://`` (TLS) or ``grpc://`` (plaintext) URL.

    ConfigError names ``setting`` for any other scheme, a missing host or port, or a path.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ConfigError(setting, url, GRPC_ACCEPTED) from None
    if (
        parts.scheme not in ("grpc", "grpcs")
        or not parts.hostname
        or port is None
        or parts.path not in ("", "/")
        or parts.query
        or parts.username
    ):
        raise ConfigError(setting, url, GRPC_ACCEPTED)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}", parts.scheme == "grpcs"


def parse_listen(value: str, setting: str, example: str) -> tuple[str, int]:
    """``HOST:PORT`` to listen on (``[::1]:PORT``; an empty host is every interface), or a
    ConfigError naming ``setting``."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(setting, value, f"use HOST:PORT, e.g. {example}")
    return host.strip("[]") or "0.0.0.0", int(port)

"""One connection factory for every queue process: plain Redis, TLS, or Redis Sentinel.

URLs::

    redis://[:password@]host:6379/0            one server (rediss:// for TLS, unix:// for a socket)
    redis+sentinel://[:password@]s1:26379,s2:26379/SERVICE[/DB][?sentinel_password=...]

With Sentinel the client asks the sentinels for the current master of ``SERVICE`` and asks again
after a failover, so workers follow a promoted replica by themselves. ``password`` is the
master's; ``sentinel_password`` the sentinels' own, when they have one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel

from bot.errors import ConfigError

SETTING = "FMBOT_STORE"
ACCEPTED = (
    "use redis://HOST:PORT/DB, rediss://... or "
    "redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB]"
)
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379
MAX_CONNECTIONS = 256  # per process: a blocking read and an ack per partition, plus enqueues


@dataclass(frozen=True, slots=True)
class SentinelURL:
    hosts: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    ssl: bool = False


def parse_sentinel_url(url: str) -> SentinelURL:
    """Split a ``redis+sentinel://`` URL; ConfigError (password masked) when malformed."""
    parts = urlsplit(url)
    shown = url.replace(parts.password, "****") if parts.password else url
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ConfigError(SETTING, shown, ACCEPTED)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    hosts: list[tuple[str, int]] = []
    for item in netloc.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep:
            host, port = port, str(SENTINEL_PORT)
        if not host or not port.isdigit():
            raise ConfigError(SETTING, shown, ACCEPTED)
        hosts.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ConfigError(SETTING, shown, ACCEPTED)
    query = parse_qs(parts.query)
    sentinel_password = query.get("sentinel_password", [None])[0]
    return SentinelURL(
        hosts=tuple(hosts),
        service=unquote(path[0]),
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        sentinel_password=sentinel_password,
        ssl=parts.scheme.startswith("rediss"),
    )


def connect(url: str, **options: Any) -> aioredis.Redis:
    """A client with ``decode_responses=True`` for ``url``; ``options`` go to the pool.

    Connections are pooled up to ``max_connections``; more concurrent commands wait for one.

    No I/O happens here: the first command connects (and, with Sentinel, discovers the master).
    """
    options.setdefault("decode_responses", True)
    options.setdefault("health_check_interval", 30)
    options.setdefault("socket_connect_timeout", 5)
    options.setdefault("max_connections", MAX_CONNECTIONS)
    scheme = urlsplit(url).scheme
    if scheme in SENTINEL_SCHEMES:
        s = parse_sentinel_url(url)
        sentinel_kwargs = {"password": s.sentinel_password} if s.sentinel_password else None
        sentinel = Sentinel(list(s.hosts), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
        master: aioredis.Redis = sentinel.master_for(
            s.service,
            db=s.db,
            username=s.username,
            password=s.password,
            ssl=s.ssl,
            **options,
        )
        return master
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(SETTING, url, ACCEPTED)
    # Blocking pool: a burst of concurrent commands waits for a free connection instead of
    # failing with "Too many connections" (redis-py's default pool stops at 100).
    pool = aioredis.BlockingConnectionPool.from_url(url, **options)
    client: aioredis.Redis = aioredis.Redis(connection_pool=pool)
    return client

"""One connection factory for every Redis user: plain Redis, TLS, Redis Sentinel or Redis Cluster.

URLs (``FMBOT_STORE``, ``FMBOT_QUEUE_URL``)::

    redis://[:password@]host:6379/0            one server (rediss:// for TLS, unix:// for a socket)
    redis+sentinel://[:password@]s1:26379,s2:26379/SERVICE[/DB][?sentinel_password=...]
    redis+cluster://[user:password@]n1:6379[,n2:6379...][/0]     (rediss+cluster:// for TLS)

With Sentinel the client asks the sentinels for the current master of ``SERVICE`` whenever it
opens a connection, and drops a connection that fails or finds a demoted master (READONLY), so
after a failover workers follow a promoted replica by themselves. (A still-running old master
keeps accepting writes on connections opened before the failover until Sentinel demotes it, some
10 s later: see README "Cluster and Sentinel".) ``password`` is the master's;
``sentinel_password`` the sentinels' own, when they have one.

With Cluster the listed nodes are only where the client starts: it reads the slot map from any of
them (``CLUSTER SLOTS``) and follows MOVED/ASK redirections and failovers by itself, so listing
two or three nodes is enough. A cluster has database 0 only. The client is a
:class:`bot.redis.client.ClusterClient` (pipelines may run registered scripts); every key fmbot
uses carries a hash tag so its multi-key commands, MULTI blocks and scripts stay in one slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from bot.errors import ConfigError
from bot.redis.client import ClusterClient, RedisClient
from bot.urls import mask_url

SETTING = "FMBOT_STORE"
ACCEPTED = (
    "use redis://HOST:PORT/DB, rediss://..., "
    "redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB] or "
    "redis+cluster://HOST:PORT[,HOST:PORT...]"
)
PLAIN_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
#: Every scheme :func:`connect` takes.
REDIS_SCHEMES = (*PLAIN_SCHEMES, *SENTINEL_SCHEMES, *CLUSTER_SCHEMES)
SENTINEL_PORT = 26379
SENTINEL_TIMEOUT = 5.0  # seconds a sentinel may take to answer
REDIS_PORT = 6379
MAX_CONNECTIONS = 256  # per process: a blocking read and an ack per partition, plus enqueues
RETRIES = 3  # a command that fails on a dead connection is sent again on a fresh one


def retry_policy() -> Retry:
    """What every client fmbot builds does when a command meets a closed connection: it
    reconnects and sends the command again, up to :data:`RETRIES` times, 50 ms to 1 s apart.

    Without it a pool built from a URL does not retry at all (redis-py's default there), so after
    a Redis restart every pooled connection failed its first command ("Connection closed by
    server"). Only connection errors are resent: a command on a connection the server closed did
    not run on the server answering now. A timeout is not resent, since the command may have
    run (an XADD or INCR sent twice would enqueue or count twice).
    """
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), RETRIES, (RedisConnectionError,))


@dataclass(frozen=True, slots=True)
class SentinelURL:
    hosts: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    ssl: bool = False


def parse_sentinel_url(url: str, setting: str = SETTING) -> SentinelURL:
    """Split a ``redis+sentinel://`` URL; ConfigError naming ``setting`` (secrets masked) when
    malformed."""
    parts = urlsplit(url)
    shown = mask_url(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ConfigError(setting, shown, ACCEPTED)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    hosts: list[tuple[str, int]] = []
    for item in netloc.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep:
            host, port = port, str(SENTINEL_PORT)
        if not host or not port.isdigit():
            raise ConfigError(setting, shown, ACCEPTED)
        hosts.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ConfigError(setting, shown, ACCEPTED)
    query = parse_qs(parts.query)
    unknown = sorted(set(query) - {"sentinel_password"})
    if unknown:
        raise ConfigError(
            setting, shown, f"unknown option {', '.join(unknown)} (only sentinel_password=...)"
        )
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


@dataclass(frozen=True, slots=True)
class ClusterURL:
    hosts: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    ssl: bool = False


def parse_cluster_url(url: str, setting: str = SETTING) -> ClusterURL:
    """Split a ``redis+cluster://`` URL; ConfigError naming ``setting`` (password masked) when
    malformed."""
    parts = urlsplit(url)
    shown = mask_url(url)
    accepted = (
        "give redis+cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...][/0] "
        "(rediss+cluster:// for TLS; a cluster has database 0 only)"
    )
    if parts.scheme not in CLUSTER_SCHEMES:
        raise ConfigError(setting, shown, ACCEPTED)
    hosts: list[tuple[str, int]] = []
    for item in parts.netloc.rsplit("@", 1)[-1].split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or host.endswith(":"):  # no port, or a bare IPv6 address
            host, port = item.strip(), str(REDIS_PORT)
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(setting, shown, accepted)
        hosts.append((host, int(port)))
    if parts.path.strip("/") not in ("", "0") or parts.query or parts.fragment:
        raise ConfigError(setting, shown, accepted)
    return ClusterURL(
        hosts=tuple(hosts),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        ssl=parts.scheme.startswith("rediss"),
    )


def check_url(url: str, setting: str = SETTING) -> None:
    """ConfigError naming ``setting`` (secrets masked) unless :func:`connect` takes ``url``.

    No I/O: what a first command would otherwise trip over (a port that is not a number, a
    database that is not one, an option the connection does not know) is caught here, at start.
    """
    scheme = urlsplit(url).scheme
    if scheme in SENTINEL_SCHEMES:
        parse_sentinel_url(url, setting)
        return
    if scheme in CLUSTER_SCHEMES:
        parse_cluster_url(url, setting)
        return
    if scheme not in PLAIN_SCHEMES:
        raise ConfigError(setting, mask_url(url), ACCEPTED)
    db = urlsplit(url).path.strip("/") if scheme != "unix" else ""
    try:
        if db and not db.isdigit():
            raise ValueError(f"the database {db!r} is not a number")
        # Builds the connection object without connecting: unknown options fail here.
        aioredis.BlockingConnectionPool.from_url(url).make_connection()  # type: ignore[no-untyped-call]
    except (ValueError, TypeError) as exc:
        reason = str(exc)
        password = urlsplit(url).password
        if password:
            reason = reason.replace(password, "****")
        raise ConfigError(
            setting, mask_url(url), f"give redis://[:PASSWORD@]HOST:PORT/DB ({reason})"
        ) from None


def connect(url: str, *, setting: str = SETTING, **options: Any) -> RedisClient:
    """A client with ``decode_responses=True`` for ``url``; ``options`` go to the pool.

    Connections are pooled up to ``max_connections`` (per node on a Cluster). On one server
    (``redis://``) more concurrent commands wait for a free connection; with Sentinel or Cluster
    they fail at once with a ConnectionError (the queue's loops retry it; a turn that meets it
    gets the "temporarily unavailable" reply), so keep ``max_connections`` above the worker's
    concurrency there.

    No I/O happens here: the first command connects (and, with Sentinel, discovers the master;
    with Cluster, reads the slot map). ConfigError naming ``setting`` for a malformed URL.
    """
    options.setdefault("decode_responses", True)
    options.setdefault("health_check_interval", 30)
    options.setdefault("socket_connect_timeout", 5)
    options.setdefault("max_connections", MAX_CONNECTIONS)
    options.setdefault("retry", retry_policy())
    scheme = urlsplit(url).scheme
    if scheme in SENTINEL_SCHEMES:
        s = parse_sentinel_url(url, setting)
        # Timeouts for the sentinels too: an unreachable one listed first must not stall master
        # discovery until the OS gives up on the connection.
        sentinel_kwargs: dict[str, Any] = {
            "socket_connect_timeout": options["socket_connect_timeout"],
            "socket_timeout": options.get("socket_timeout") or SENTINEL_TIMEOUT,
        }
        if s.sentinel_password:
            sentinel_kwargs["password"] = s.sentinel_password
        sentinel = Sentinel(list(s.hosts), sentinel_kwargs=sentinel_kwargs)
        master: aioredis.Redis = sentinel.master_for(
            s.service,
            db=s.db,
            username=s.username,
            password=s.password,
            ssl=s.ssl,
            **options,
        )
        return master
    if scheme in CLUSTER_SCHEMES:
        c = parse_cluster_url(url, setting)
        return ClusterClient(
            startup_nodes=[ClusterNode(host, port) for host, port in c.hosts],
            username=c.username,
            password=c.password,
            ssl=c.ssl,
            **options,
        )
    check_url(url, setting)  # a plain URL (Sentinel and Cluster ones were parsed above)
    # Blocking pool: a burst of concurrent commands waits for a free connection instead of
    # failing with "Too many connections" (redis-py's default pool stops at 100).
    pool = aioredis.BlockingConnectionPool.from_url(url, **options)
    client: aioredis.Redis = aioredis.Redis(connection_pool=pool)
    return client

"""The Redis clients fmbot talks to: one server (plain, TLS or Sentinel's master) or a Cluster.

:data:`RedisClient` is what every component taking a client accepts (the Redis dialog store, the
limits, the queue); :func:`bot.queue.connect.connect` builds one from a URL. Both kinds have the
same command API. On a Cluster every multi-key command, MULTI block and Lua script must stay in
one hash slot: fmbot's keys carry ``{chat}``, ``{user}`` or ``{q:N}`` hash tags for that, and
the only cross-slot writes (the ``P:chats`` index next to a chat's keys) are sent in
non-transactional pipelines, which the cluster client splits by node.

:class:`ClusterClient` is the Cluster client ``connect`` returns. redis-py refuses EVALSHA in a
cluster pipeline (it could not load a missing script on the right node); this client's pipelines
send a script registered on the client (``register_script``) as EVAL instead, so code that runs
scripts in a pipeline (the worker's lease renewals) works unchanged on a Cluster.

:func:`pack_with_hiredis`: redis-py packs commands in C (hiredis) on its sync connections but in
Python on its asyncio ones (redis/redis-py#4176; the fix, #4191, is not released). Packing was a
tenth of a worker's CPU in ``fmbot bench``, so the pools fmbot opens on one server or through
Sentinel pack with the sync client's own serializer until redis-py does. Cluster nodes make their
connections themselves and keep redis-py's packing.
"""

from __future__ import annotations

import codecs
from collections.abc import Generator
from typing import Any, TypeAlias, TypeVar

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterPipeline
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.commands.core import AsyncScript
from redis.connection import HiredisRespSerializer
from redis.exceptions import RedisClusterException, RedisError
from redis.typing import EncodableT, KeyT, ScriptTextT
from redis.utils import HIREDIS_AVAILABLE

RedisClient: TypeAlias = Redis | RedisCluster

#: Everything a client raises for a failed command: RedisError, and the cluster client's own
#: errors that are not RedisErrors (e.g. SlotNotCoveredError while a cluster reshapes).
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException)

__all__ = [
    "REDIS_ERRORS",
    "ClusterClient",
    "HiredisPacking",
    "RedisClient",
    "is_cluster",
    "pack_with_hiredis",
]

P = TypeVar("P", bound=ConnectionPool)
_SERIALIZER = HiredisRespSerializer()
try:  # redis-py 5 counted any hiredis as available, also one without pack_command
    from hiredis import pack_command  # noqa: F401

    HIREDIS_PACKS = HIREDIS_AVAILABLE
except ImportError:
    HIREDIS_PACKS = False


class HiredisPacking:
    """Mixed into an asyncio connection class: commands are packed by hiredis, as the sync
    client packs them (the same serializer: memoryviews copied, DataError for a value it cannot
    send). hiredis encodes text as strict UTF-8, so it serves only pools that do too."""

    def pack_command(self, *args: EncodableT) -> list[bytes]:
        packed: list[bytes] = _SERIALIZER.pack(*args)  # type: ignore[arg-type]  # typed list[Any]
        return packed


def _packing(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """One subclass per connection class, kept on the class (it goes when the class goes)."""
    packing: type[AbstractConnection] | None = cls.__dict__.get("_fmbot_hiredis_packing")
    if packing is None:
        packing = type(f"Hiredis{cls.__name__}", (HiredisPacking, cls), {})
        cls._fmbot_hiredis_packing = packing  # type: ignore[attr-defined]
    return packing


def _utf8_strict(pool: ConnectionPool) -> bool:
    options = pool.connection_kwargs
    try:
        utf8 = codecs.lookup(options.get("encoding") or "utf-8").name == "utf-8"
    except LookupError:  # redis-py reports an unknown encoding at the first command
        return False
    return utf8 and (options.get("encoding_errors") or "strict") == "strict"


def pack_with_hiredis(pool: P) -> P:
    """``pool``, its future connections packing with hiredis.

    Connections are made lazily, so this works on a pool before its first command; its class
    (plain, TLS, Unix socket, Sentinel-managed) is kept, only ``pack_command`` is replaced.
    Unchanged without hiredis, or when the pool encodes text otherwise than as strict UTF-8
    (``?encoding=latin-1``, ``encoding_errors=replace``), which hiredis cannot do."""
    cls = pool.connection_class
    if HIREDIS_PACKS and not issubclass(cls, HiredisPacking) and _utf8_strict(pool):
        pool.connection_class = _packing(cls)
    return pool


def is_cluster(client: RedisClient) -> bool:
    return isinstance(client, RedisCluster)


class ClusterClient(RedisCluster):
    """A :class:`~redis.asyncio.RedisCluster` whose pipelines can run registered scripts."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.script_bodies: dict[str, ScriptTextT] = {}

    def register_script(self, script: ScriptTextT) -> AsyncScript:  # type: ignore[override]
        registered = super().register_script(script)
        self.script_bodies[registered.sha] = script
        return registered

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return _ScriptingPipeline(self, transaction)  # type: ignore[abstract]


class _ScriptingPipeline(ClusterPipeline):
    # ``Script.__call__`` awaits what ``evalsha`` returns. Awaiting a ClusterPipeline means
    # (re)initialising it, which empties its queue; here, as with a plain Pipeline, it only makes
    # sure the client knows the cluster and keeps the commands queued so far.
    def __await__(self) -> Generator[Any, None, ClusterPipeline]:
        return self._ready().__await__()

    async def _ready(self) -> ClusterPipeline:
        await self.cluster_client.initialize()  # a no-op once the slot map is known
        return self

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: KeyT | EncodableT) -> ClusterPipeline:
        client = self.cluster_client
        body = client.script_bodies.get(sha) if isinstance(client, ClusterClient) else None
        if body is None:
            raise RedisClusterException(
                f"EVALSHA {sha} in a cluster pipeline: register the script on this client first"
            )
        # EVAL carries the body, so no node can answer NOSCRIPT; Redis caches it by its SHA.
        return self.execute_command("EVAL", body, numkeys, *keys_and_args)

"""The Redis clients fmbot talks to: one server (plain, TLS or Sentinel's master) or a Cluster.

:data:`RedisClient` is what every component taking a client accepts (the Redis dialog store, the
limits, the queue); :func:`bot.redis.connect.connect` builds one from a URL. Both kinds have the
same command API. On a Cluster every multi-key command, MULTI block and Lua script must stay in
one hash slot: fmbot's keys carry ``{chat}``, ``{user}`` or ``{q:N}`` hash tags for that, and
the only cross-slot writes (the ``P:chats`` index next to a chat's keys) are sent in
non-transactional pipelines, which the cluster client splits by node.

:class:`ClusterClient` is the Cluster client ``connect`` returns. redis-py refuses EVALSHA in a
cluster pipeline (it could not load a missing script on the right node); this client's pipelines
send a script registered on the client (``register_script``) as EVAL instead, so code that runs
scripts in a pipeline (the worker's lease renewals) works unchanged on a Cluster.

Commands are packed by hiredis: redis-py (>=8.2) does it on its asyncio connections itself
(``redis[hiredis]`` is a dependency), Cluster nodes included.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, TypeAlias

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterPipeline
from redis.commands.core import AsyncScript
from redis.exceptions import RedisClusterException, RedisError
from redis.typing import EncodableT, KeyT, ScriptTextT

RedisClient: TypeAlias = Redis | RedisCluster

#: Everything a client raises for a failed command: RedisError, and the cluster client's own
#: errors that are not RedisErrors (e.g. SlotNotCoveredError while a cluster reshapes).
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException)

__all__ = [
    "REDIS_ERRORS",
    "ClusterClient",
    "RedisClient",
    "is_cluster",
]


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

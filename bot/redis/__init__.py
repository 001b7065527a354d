"""Redis for every user in fmbot: the client types (:mod:`bot.redis.client`) and the one factory
that builds a client from a URL (:mod:`bot.redis.connect`).

It sits below the dialog stores, the limits and the queue, which all import it; it imports only
leaf modules (errors, urls), never a component that uses Redis.
"""

from bot.redis.client import REDIS_ERRORS, ClusterClient, RedisClient, is_cluster
from bot.redis.connect import REDIS_SCHEMES, check_url, connect

__all__ = [
    "REDIS_ERRORS",
    "REDIS_SCHEMES",
    "ClusterClient",
    "RedisClient",
    "check_url",
    "connect",
    "is_cluster",
]

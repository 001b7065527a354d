"""Retrying through Redis outages: which errors are transient, and jittered exponential backoff.

Every loop of the queue catches :data:`TRANSIENT`, waits :meth:`Backoff.next` and tries again, so a
Redis restart or failover stalls work instead of killing processes. Full jitter spreads the
reconnects of many workers so a recovering Redis is not hit by all of them at once.
"""

from __future__ import annotations

import random

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bot.errors import StoreError

#: Errors that mean "Redis is not reachable right now" (BusyLoadingError, raised while a
#: restarted Redis loads its data, is a ConnectionError; ReadOnlyError comes from a demoted
#: master during a Sentinel failover).
TRANSIENT: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    OSError,
    StoreError,
)


class Backoff:
    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self.base = base
        self.cap = cap
        self._failures = 0

    def next(self) -> float:
        """Seconds to wait after one more failure in a row: in [c/2, c], c = min(cap, base·2ⁿ)."""
        ceiling = min(self.cap, self.base * 2**self._failures)
        self._failures = min(self._failures + 1, 30)
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._failures = 0

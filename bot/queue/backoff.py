"""Retrying through Redis outages: which errors are transient, and jittered exponential backoff.

Every loop of the queue catches :data:`TRANSIENT`, waits :meth:`Backoff.next` and tries again, so a
Redis restart or failover stalls work instead of killing processes. Full jitter spreads the
reconnects of many workers so a recovering Redis is not hit by all of them at once.
"""

from __future__ import annotations

import random

from redis.exceptions import ResponseError

from bot.errors import StoreError
from bot.observe import metrics
from bot.redis import REDIS_ERRORS

#: Errors after which a queue loop waits and tries again instead of failing: every error of the
#: Redis client — unreachable, restarting (BusyLoadingError), a demoted master during a Sentinel
#: failover (READONLY), a Cluster reshaping (CLUSTERDOWN, TRYAGAIN, an uncovered slot) and a
#: server refusing writes (MISCONF after a failed save, OOM) all pass, and none is the fault of
#: the job at hand — plus OSError and StoreError (the stores' wrapping of the same errors).
TRANSIENT: tuple[type[Exception], ...] = (*REDIS_ERRORS, OSError, StoreError)


def trouble(exc: BaseException) -> str:
    """How a log line names a :data:`TRANSIENT` error. An error reply is told apart from an
    unreachable server: it may be a setup problem that waiting will not fix (WRONGTYPE: another
    program's key under fmbot's prefix; NOPERM: the user's ACL), so the operator must look."""
    metrics.redis_error(exc)  # every error a queue loop waits out is named here first
    cause = exc.__cause__ if isinstance(exc, StoreError) else exc
    if isinstance(cause, ResponseError):
        return "Redis refused a command"
    return "Redis unavailable"


class Backoff:
    """The default cap keeps a recovering Redis answered within about a second: retries of an
    unreachable server cost it nothing, and a backlog waiting seconds longer than the outage
    costs every user in it."""

    def __init__(self, base: float = 0.1, cap: float = 1.0) -> None:
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

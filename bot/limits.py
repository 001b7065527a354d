"""Per-user limits: messages per minute and tokens per day, shared by every worker via Redis.

Windows are fixed (the current minute, the current UTC day): one counter key each, incremented
and read in a single round trip, expiring by itself. Admins are exempt (the manager skips them).

Redis keys (``P`` is the prefix; ``{user}`` a Cluster hash tag, so each user's pipeline and MGET
stay in one slot):

    P:{user}:rate:<unix minute>   messages this minute (expires after 2 minutes)
    P:{user}:tokens:<YYYYMMDD>    tokens used this UTC day (expires after 2 days)
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass

from bot.errors import StoreError
from bot.redis_client import REDIS_ERRORS, RedisClient


@dataclass(frozen=True, slots=True)
class LimitStatus:
    messages_this_minute: int
    tokens_today: int


def _minute(now: float) -> int:
    return int(now // 60)


def _day(now: float) -> str:
    return time.strftime("%Y%m%d", time.gmtime(now))


class Limits(abc.ABC):
    def __init__(self, rate_per_minute: int = 0, daily_tokens: int = 0) -> None:
        self.rate_per_minute = rate_per_minute
        self.daily_tokens = daily_tokens

    @property
    def active(self) -> bool:
        return bool(self.rate_per_minute or self.daily_tokens)

    @abc.abstractmethod
    async def _count_message(self, user: str, now: float) -> LimitStatus:
        """Count one message from ``user`` and return the figures including it."""

    @abc.abstractmethod
    async def add_tokens(self, user: str, tokens: int) -> None: ...

    @abc.abstractmethod
    async def status(self, user: str) -> LimitStatus: ...

    async def admit(self, user: str) -> str | None:
        """Count a message; return a refusal for the user when a limit is exceeded, else None."""
        now = time.time()
        status = await self._count_message(user, now)
        if self.rate_per_minute and status.messages_this_minute > self.rate_per_minute:
            wait = 60 - int(now % 60)
            return (
                f"You are sending messages too fast: the limit is {self.rate_per_minute} per "
                f"minute. Please wait {wait} s and send it again."
            )
        if self.daily_tokens and status.tokens_today >= self.daily_tokens:
            return (
                f"You have used today's budget of {self.daily_tokens} tokens "
                f"({status.tokens_today} used). It renews at 00:00 UTC."
            )
        return None

    def describe(self, status: LimitStatus) -> str:
        parts = []
        if self.daily_tokens:
            parts.append(f"today {status.tokens_today} of {self.daily_tokens} tokens")
        else:
            parts.append(f"today {status.tokens_today} tokens")
        if self.rate_per_minute:
            parts.append(
                f"this minute {status.messages_this_minute} of {self.rate_per_minute} messages"
            )
        return "You: " + ", ".join(parts) + "."


class MemoryLimits(Limits):
    """Limits for one process (console, SQLite deployments)."""

    def __init__(self, rate_per_minute: int = 0, daily_tokens: int = 0) -> None:
        super().__init__(rate_per_minute, daily_tokens)
        self._rate: dict[tuple[str, int], int] = {}
        self._tokens: dict[tuple[str, str], int] = {}

    async def _count_message(self, user: str, now: float) -> LimitStatus:
        key = (user, _minute(now))
        # Drop other minutes so memory stays bounded by active users.
        self._rate = {k: v for k, v in self._rate.items() if k[1] == key[1]}
        self._rate[key] = self._rate.get(key, 0) + 1
        return LimitStatus(self._rate[key], self._tokens.get((user, _day(now)), 0))

    async def add_tokens(self, user: str, tokens: int) -> None:
        key = (user, _day(time.time()))
        self._tokens[key] = self._tokens.get(key, 0) + tokens

    async def status(self, user: str) -> LimitStatus:
        now = time.time()
        return LimitStatus(
            self._rate.get((user, _minute(now)), 0), self._tokens.get((user, _day(now)), 0)
        )


class RedisLimits(Limits):
    """Limits shared by every process on one Redis."""

    def __init__(
        self,
        client: RedisClient,
        prefix: str = "fmbot",
        rate_per_minute: int = 0,
        daily_tokens: int = 0,
    ) -> None:
        super().__init__(rate_per_minute, daily_tokens)
        self._r = client
        self.prefix = prefix

    def _rate_key(self, user: str, now: float) -> str:
        return f"{self.prefix}:{{{user}}}:rate:{_minute(now)}"

    def _tokens_key(self, user: str, now: float) -> str:
        return f"{self.prefix}:{{{user}}}:tokens:{_day(now)}"

    async def _count_message(self, user: str, now: float) -> LimitStatus:
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.incr(self._rate_key(user, now))
                pipe.expire(self._rate_key(user, now), 120)
                pipe.get(self._tokens_key(user, now))
                count, _, tokens = await pipe.execute()
        except REDIS_ERRORS as exc:
            raise StoreError(f"Redis is unavailable: {exc}") from exc
        return LimitStatus(int(count), int(tokens or 0))

    async def add_tokens(self, user: str, tokens: int) -> None:
        now = time.time()
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.incrby(self._tokens_key(user, now), tokens)
                pipe.expire(self._tokens_key(user, now), 2 * 86400)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            raise StoreError(f"Redis is unavailable: {exc}") from exc

    async def status(self, user: str) -> LimitStatus:
        now = time.time()
        try:
            rate, tokens = await self._r.mget(
                [self._rate_key(user, now), self._tokens_key(user, now)]
            )
        except REDIS_ERRORS as exc:
            raise StoreError(f"Redis is unavailable: {exc}") from exc
        return LimitStatus(int(rate or 0), int(tokens or 0))

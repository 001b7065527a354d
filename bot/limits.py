"""Per-user limits: messages per minute and tokens per day, shared by every worker via Redis.

Windows are fixed (the current minute, the current UTC day): one counter key each, incremented
and read in a single round trip, expiring by itself. Admins are exempt (the manager skips them).

Redis keys (``P`` is the prefix; ``{u:ID}`` a Cluster hash tag, so each user's pipeline and MGET
stay in one slot):

    P:{u:ID}:rate:<unix minute>   messages this minute (expires after 2 minutes)
    P:{u:ID}:tokens:<YYYYMMDD>    tokens used this UTC day (expires after 2 days)

``ID`` is a pseudonym, not the user id (:func:`pseudonym`): HMAC-SHA256 of the user id keyed with
FMBOT_PSEUDONYM_KEY, or without it SHA-256 of the prefix and the user id. So these counters need
not be deleted by ``/forget`` (they must not be: a user over budget would get a fresh one) and
still name no one; they expire by themselves. Counters written by earlier versions under the raw
id (``P:{user}:...``) are carried over and deleted by :meth:`Limits.forget`.
"""

from __future__ import annotations

import abc
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any

from bot.errors import StoreError
from bot.redis import REDIS_ERRORS, RedisClient


@dataclass(frozen=True, slots=True)
class LimitStatus:
    messages_this_minute: int
    tokens_today: int


def _minute(now: float) -> int:
    return int(now // 60)


def _day(now: float) -> str:
    return time.strftime("%Y%m%d", time.gmtime(now))


RATE_TTL = 120  # seconds a minute's message count is kept: the minute, and one to spare
TOKENS_TTL = 2 * 86400  # seconds a day's token count is kept after its last change


def _add(pipe: Any, key: str, amount: int, ttl: int) -> None:
    """Queue a counter increment and its expiry on ``pipe``."""
    pipe.incrby(key, amount)
    pipe.expire(key, ttl)


def pseudonym(user: str, secret: bytes | None, prefix: str) -> str:
    """The name limit keys use for ``user``: ``u:`` and 32 hex digits (128 bits) of
    HMAC-SHA256(secret, user), or of SHA-256(prefix:user) without a secret. Without a secret it
    only hides the id from a casual look: ids are few enough to try them all."""
    data = user.encode("utf-8", "surrogatepass")
    if secret:
        digest = hmac.new(secret, data, hashlib.sha256).hexdigest()
    else:
        digest = hashlib.sha256(prefix.encode() + b":" + data).hexdigest()
    return "u:" + digest[:32]


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

    #: Where the counters live and how long, for the ``/forget`` reply.
    kept_where = "in this process's memory only (until it restarts, or a later day begins)"
    tokens_kept = "today's token count"
    rate_kept = "this minute's message count"

    def kept_after_forget(self) -> str:
        """What ``/forget`` leaves of the user's limits, and for how long (its reply says so)."""
        counts = []
        if self.daily_tokens:
            counts.append(self.tokens_kept)
        if self.rate_per_minute:
            counts.append(self.rate_kept)
        if not counts:
            return ""
        return (
            f"Kept, so that limits still apply: {' and '.join(counts)}, {self.kept_where}, "
            "holding only the count."
        )

    async def forget(self, user: str) -> None:  # noqa: B027 - optional hook
        """``/forget``: drop what names ``user`` while the counters keep applying (today's tokens
        and this minute's messages still count). Default: nothing is stored under the id."""

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
        if any(k[1] != key[1] for k in self._tokens):  # a new day: earlier ones no longer count
            self._tokens = {k: v for k, v in self._tokens.items() if k[1] == key[1]}
        self._tokens[key] = self._tokens.get(key, 0) + tokens

    async def status(self, user: str) -> LimitStatus:
        now = time.time()
        return LimitStatus(
            self._rate.get((user, _minute(now)), 0), self._tokens.get((user, _day(now)), 0)
        )


class RedisLimits(Limits):
    """Limits shared by every process on one Redis."""

    kept_where = "in Redis under a pseudonym (a hash), not your id"
    tokens_kept = "today's token count (deleted 2 days after its last change)"
    rate_kept = "this minute's message count (deleted after 2 minutes)"

    def __init__(
        self,
        client: RedisClient,
        prefix: str = "fmbot",
        rate_per_minute: int = 0,
        daily_tokens: int = 0,
        *,
        secret: bytes | None = None,
    ) -> None:
        super().__init__(rate_per_minute, daily_tokens)
        self._r = client
        self.prefix = prefix
        self._secret = secret

    def _tag(self, user: str) -> str:
        return pseudonym(user, self._secret, self.prefix)

    def _rate_key(self, user: str, now: float) -> str:
        return f"{self.prefix}:{{{self._tag(user)}}}:rate:{_minute(now)}"

    def _tokens_key(self, user: str, now: float) -> str:
        return f"{self.prefix}:{{{self._tag(user)}}}:tokens:{_day(now)}"

    async def forget(self, user: str) -> None:
        """Delete counters an earlier version kept under the raw id (``P:{user}:rate:*``,
        ``P:{user}:tokens:*``), adding this minute's and today's into the pseudonymous ones
        first so the limits still apply. Their possible names are known: the last 3 minutes,
        the last 3 days (what their TTLs can have left)."""
        now = time.time()
        legacy = f"{self.prefix}:{{{user}}}"
        minutes = [f"{legacy}:rate:{_minute(now) - i}" for i in range(3)]
        days = [f"{legacy}:tokens:{_day(now - i * 86400)}" for i in range(3)]
        try:
            # Two slots (the raw tag, the pseudonym): pipelines without MULTI, which a cluster
            # client splits by node. A message counted in between is not lost (INCRBY adds).
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.getdel(minutes[0])
                pipe.getdel(days[0])
                pipe.delete(*minutes[1:])
                pipe.delete(*days[1:])
                rate, tokens, _, _ = await pipe.execute()
            if rate is None and tokens is None:
                return
            async with self._r.pipeline(transaction=False) as pipe:
                if rate is not None:
                    _add(pipe, self._rate_key(user, now), int(rate), RATE_TTL)
                if tokens is not None:
                    _add(pipe, self._tokens_key(user, now), int(tokens), TOKENS_TTL)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            raise StoreError(f"Redis is unavailable: {exc}") from exc

    async def _count_message(self, user: str, now: float) -> LimitStatus:
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                _add(pipe, self._rate_key(user, now), 1, RATE_TTL)
                pipe.get(self._tokens_key(user, now))
                count, _, tokens = await pipe.execute()
        except REDIS_ERRORS as exc:
            raise StoreError(f"Redis is unavailable: {exc}") from exc
        return LimitStatus(int(count), int(tokens or 0))

    async def add_tokens(self, user: str, tokens: int) -> None:
        now = time.time()
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                _add(pipe, self._tokens_key(user, now), tokens, TOKENS_TTL)
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

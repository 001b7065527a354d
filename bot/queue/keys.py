"""The queue's key layout and the chat → partition map, in one place.

``P`` is the key prefix (``fmbot``; ``FMBOT_REDIS_PREFIX`` overrides it). Every key of one
partition carries the hash tag ``{q:N}``, so a partition's stream, lease and de-duplication keys
share one Redis Cluster slot and Lua scripts and MULTI blocks may touch them together::

    P:{q:N}:jobs          stream of jobs for partition N (consumer group "workers")
    P:{q:N}:lease         owner token of the worker processing partition N (PX expiry)
    P:{q:N}:seen:KEY      entry id of an update already enqueued under KEY (ingress dedupe, TTL)
    P:{q:N}:dead          stream of jobs whose handler kept failing (kept for inspection)
    P:q:workers           sorted set: live workers, scored by heartbeat deadline (ms, Redis clock)
    P:q:partitions        the partition count every process must agree on (set once)

Per chat (the dialog store's ``{chat}`` tag, next to ``P:{chat}:turns`` and ``P:{chat}:state``)::

    P:{chat}:answered     id of the chat's last job whose turn was stored (same script as the turns)
    P:{chat}:delivered    the answered id whose reply a channel has delivered (never moves back)
    P:{chat}:replies      final replies of ``python -m bot.queue.worker_main`` (a generic outbox)
    P:{chat}:album:GROUP  "FIRST LAST": the entry ids of an album's first item, whose job answered
                          it, and of the last item answered with it (Telegram workers, TTL)
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.settings import Settings

DEFAULT_PREFIX = "fmbot"
DEFAULT_PARTITIONS = 16
GROUP = "workers"


def partition_of(chat: str, partitions: int) -> int:
    """A stable partition for ``chat``: CRC-32, the same in every process (``hash`` is salted)."""
    return zlib.crc32(chat.encode()) % partitions


@dataclass(frozen=True, slots=True)
class QueueKeys:
    prefix: str = DEFAULT_PREFIX
    partitions: int = DEFAULT_PARTITIONS

    @classmethod
    def from_settings(cls, settings: Settings) -> QueueKeys:
        """FMBOT_REDIS_PREFIX and FMBOT_QUEUE_PARTITIONS (environment or .env)."""
        return cls(settings.redis_prefix, settings.queue_partitions)

    def partition(self, chat: str) -> int:
        return partition_of(chat, self.partitions)

    def jobs(self, p: int) -> str:
        return f"{self.prefix}:{{q:{p}}}:jobs"

    @property
    def jobs_template(self) -> str:
        """The job streams' name with the partition left out (one span name for all)."""
        return f"{self.prefix}:{{q:N}}:jobs"

    def lease(self, p: int) -> str:
        return f"{self.prefix}:{{q:{p}}}:lease"

    def seen(self, p: int, key: str) -> str:
        return f"{self.prefix}:{{q:{p}}}:seen:{key}"

    def dead(self, p: int) -> str:
        return f"{self.prefix}:{{q:{p}}}:dead"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:q:workers"

    @property
    def config(self) -> str:
        return f"{self.prefix}:q:partitions"

    def answered(self, chat: str) -> str:
        return f"{self.prefix}:{{{chat}}}:answered"

    def delivered(self, chat: str) -> str:
        return f"{self.prefix}:{{{chat}}}:delivered"

    def replies(self, chat: str) -> str:
        return f"{self.prefix}:{{{chat}}}:replies"

    def album(self, chat: str, group: str) -> str:
        return f"{self.prefix}:{{{chat}}}:album:{group}"

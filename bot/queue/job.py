"""A job as handlers see it, and the context variable that names the job being handled."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any


class Tenure:
    """One partition runner's hold on its lease. While it lasts the worker is its chats' only
    writer (so what it cached of them is current: :mod:`bot.queue.cache`). It ends when the
    worker gives running jobs up — the lease is lost or lapsing, or a drain ran out of grace —
    and those jobs are then the next owner's to answer: what they would still store (the part
    of a reply written before they were cut off) is not stored, and not marked answered."""

    __slots__ = ("ended",)

    def __init__(self) -> None:
        self.ended = False


@dataclass(frozen=True, slots=True)
class Job:
    """One enqueued update. ``id`` is its stream entry id, ordered by arrival within its
    partition (and so within its chat); ids of different partitions may be equal.

    ``attempt`` is 1 on first delivery; more means an earlier worker took it and died or lost
    its partition before acknowledging, so the handler may already have run (partly or fully):
    see :class:`bot.queue.journal.JournaledRedisStore` for how a turn is answered once.
    """

    id: str
    chat: str
    payload: dict[str, Any]
    partition: int
    attempt: int = 1
    #: False for jobs the worker ran outside their chat's lane (``immediate``): not ordered.
    ordered: bool = True
    #: The lease tenure the job was read under (one per partition runner, see Tenure).
    tenure: Tenure | None = field(default=None, compare=False, repr=False)
    #: The W3C trace context the ingress stored with the job, when it traced the enqueue.
    trace: Mapping[str, str] | None = field(default=None, compare=False, repr=False)

    @property
    def redelivered(self) -> bool:
        return self.attempt > 1


#: The job whose handler is running in this context (set by the worker around each handler
#: call; copied into tasks the handler starts, e.g. the dialog manager's shielded store write).
current_job: ContextVar[Job | None] = ContextVar("fmbot_current_job", default=None)

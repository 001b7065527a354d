"""What happens to a message that arrives while its chat's reply is still being generated.

``FMBOT_BUSY_POLICY``:

* ``queue`` (default): answer every message, in order, one turn at a time;
* ``merge``: messages that arrived meanwhile become one turn (joined by blank lines);
* ``interrupt``: stop the current reply (kept, marked stopped) and answer what arrived since,
  as one turn.

The per-chat lock (``bot.locks``) is FIFO, so the oldest waiting message gets the turn first and
takes every message that is waiting with it; the later callers find theirs taken and reply nothing.
A merged turn is stored in the context of its newest message (:attr:`Ticket.context`), so context
variables that say which message a write answers (the queue's ``current_job``) name the newest.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Iterator
from enum import StrEnum

from bot.events import Incoming


class BusyPolicy(StrEnum):
    QUEUE = "queue"
    MERGE = "merge"
    INTERRUPT = "interrupt"


#: Called when a message takes its place in its chat's queue, in the sender's context. A caller
#: that feeds one chat's messages concurrently (the Redis queue's overlapping lanes) starts the
#: next message only after this, so the gate sees them in arrival order.
arrival_hook: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "fmbot_arrival_hook", default=None
)


@dataclasses.dataclass(eq=False)
class Ticket:
    incoming: Incoming
    taken: bool = False
    #: The sender's context at arrival; after take(), the context the turn is stored in.
    context: contextvars.Context = dataclasses.field(default_factory=contextvars.copy_context)


class BusyGate:
    def __init__(self, policy: BusyPolicy = BusyPolicy.QUEUE) -> None:
        self.policy = policy
        self._waiting: dict[str, list[Ticket]] = {}
        self._running: dict[str, asyncio.Event] = {}

    @property
    def overlaps(self) -> bool:
        """Whether the policy needs a chat's messages in flight together (merge, interrupt)."""
        return self.policy is not BusyPolicy.QUEUE

    def arrive(self, incoming: Incoming) -> Ticket:
        """Register a message before it waits for its chat's turn."""
        ticket = Ticket(incoming)
        if self.policy is not BusyPolicy.QUEUE:
            self._waiting.setdefault(incoming.chat, []).append(ticket)
        if self.policy is BusyPolicy.INTERRUPT and incoming.chat in self._running:
            self._running[incoming.chat].set()
        hook = arrival_hook.get()
        if hook is not None:
            hook()
        return ticket

    def take(self, ticket: Ticket) -> Incoming | None:
        """Under the chat's lock: the message(s) to answer now, or None if already answered."""
        if self.policy is BusyPolicy.QUEUE:
            return ticket.incoming
        if ticket.taken:
            return None
        chat = ticket.incoming.chat
        batch = self._waiting.pop(chat, [ticket])
        for t in batch:
            t.taken = True
        if len(batch) == 1:
            return ticket.incoming
        ticket.context = batch[-1].context
        text = "\n\n".join(t.incoming.text for t in batch if t.incoming.text)
        pictures = tuple(p for t in batch for p in t.incoming.pictures)
        return dataclasses.replace(batch[-1].incoming, text=text, pictures=pictures)

    def leave(self, ticket: Ticket) -> None:
        """Forget a ticket whose caller stopped waiting (so it is not merged later)."""
        if ticket.taken:
            return
        waiting = self._waiting.get(ticket.incoming.chat)
        if waiting and ticket in waiting:
            waiting.remove(ticket)
            if not waiting:
                del self._waiting[ticket.incoming.chat]

    @contextlib.contextmanager
    def running(self, chat: str) -> Iterator[asyncio.Event]:
        """Mark the chat's turn as running; the event is set when a newer message interrupts."""
        event = asyncio.Event()
        self._running[chat] = event
        try:
            yield event
        finally:
            if self._running.get(chat) is event:
                del self._running[chat]

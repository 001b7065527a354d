"""What happens to a message that arrives while its chat's reply is still being generated.

``FMBOT_BUSY_POLICY``:

* ``queue`` (default): answer every message, in order, one turn at a time;
* ``merge``: messages that arrived meanwhile become one turn (joined by blank lines);
* ``interrupt``: stop the current reply (kept, marked stopped) and answer what arrived since,
  as one turn.

The per-chat lock (``bot.locks``) is FIFO, so the oldest waiting message gets the turn first and
takes every message that is waiting with it; the later callers find theirs taken and reply nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterator
from enum import StrEnum

from bot.events import Incoming


class BusyPolicy(StrEnum):
    QUEUE = "queue"
    MERGE = "merge"
    INTERRUPT = "interrupt"


@dataclasses.dataclass(eq=False)
class Ticket:
    incoming: Incoming
    taken: bool = False


class BusyGate:
    def __init__(self, policy: BusyPolicy = BusyPolicy.QUEUE) -> None:
        self.policy = policy
        self._waiting: dict[str, list[Ticket]] = {}
        self._running: dict[str, asyncio.Event] = {}

    def arrive(self, incoming: Incoming) -> Ticket:
        """Register a message before it waits for its chat's turn."""
        ticket = Ticket(incoming)
        if self.policy is not BusyPolicy.QUEUE:
            self._waiting.setdefault(incoming.chat, []).append(ticket)
        if self.policy is BusyPolicy.INTERRUPT and incoming.chat in self._running:
            self._running[incoming.chat].set()
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
        text = "\n\n".join(t.incoming.text for t in batch)
        return dataclasses.replace(batch[-1].incoming, text=text)

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

"""A worker's copy of the chats it answers, valid while it holds their partition's lease.

While a worker holds partition N's lease it is the only process that runs jobs of N's chats, so
it is also the only writer of their history: what it read and wrote during that tenure is what
Redis holds. The journaled store keeps that copy and answers the next turn's ``load`` from it,
which saves a round trip and decoding the whole history on every turn.

An entry is used only by a job of the same tenure (the :class:`~bot.queue.partition
.PartitionRunner` that read the job; a lease lost and taken again is a new runner, so a new
tenure reads Redis afresh), only while Redis would still hold the chat (the history TTL, counted
from the entry's last write; with a TTL set, an entry filled by a read is used only after this
worker's first write, which is when it learns the deadline), and only for a window no longer
than what it was filled with. Writes that change a chat in ways the copy does not model
(``/new``, ``/mode``, ``/forget``, a failed or uncertain write, a job outside its chat's lane)
drop the entry, and a read that overlapped such a write is not kept.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bot.stores.base import Turn

DEFAULT_CHATS = 4096  # entries kept, least recently used dropped first


@dataclass(slots=True)
class _Entry:
    tenure: object
    state: dict[str, str]
    turns: list[Turn]
    window: int | None  # the ``last`` it was read with; None: every stored turn
    expires: float | None  # monotonic time at which Redis forgets the chat (history TTL)


class ChatCache:
    def __init__(self, max_chats: int = DEFAULT_CHATS) -> None:
        self.max_chats = max_chats
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self.hits = 0
        self.misses = 0
        self.epoch = 0  # bumped by every drop: a read that started before one is not kept

    def __len__(self) -> int:
        return len(self._entries)

    def get(
        self, chat: str, tenure: object, last: int | None
    ) -> tuple[dict[str, str], list[Turn]] | None:
        """Copies of the chat's state and newest ``last`` turns, or None when not known here."""
        entry = self._entries.get(chat)
        if (
            entry is None
            or entry.tenure is not tenure
            or (entry.expires is not None and time.monotonic() >= entry.expires)
            or (entry.window is not None and (last is None or last > entry.window))
        ):
            self.misses += 1
            return None
        self._entries.move_to_end(chat)
        self.hits += 1
        turns = entry.turns[-last:] if last else entry.turns
        return dict(entry.state), list(turns)

    def fill(
        self,
        chat: str,
        tenure: object,
        state: Mapping[str, str],
        turns: Sequence[Turn],
        last: int | None,
        ttl: float | None,
        epoch: int,
    ) -> None:
        """Remember what a read that started at ``epoch`` returned for ``chat``."""
        if epoch != self.epoch:
            return  # a drop happened meanwhile: the read may predate that write
        # With a TTL, when Redis expires the chat depends on its last write, unknown here:
        # usable from this worker's first write on (appended() sets the deadline).
        expires = None if ttl is None else time.monotonic()
        self._entries[chat] = _Entry(tenure, dict(state), list(turns), last, expires)
        self._entries.move_to_end(chat)
        while len(self._entries) > self.max_chats:
            self._entries.popitem(last=False)

    def appended(
        self,
        chat: str,
        tenure: object,
        turns: Sequence[Turn],
        counters: Mapping[str, int] | None,
        max_turns: int | None,
        ttl: float | None,
    ) -> None:
        """Apply a write that Redis confirmed; an entry of another tenure is dropped."""
        entry = self._entries.get(chat)
        if entry is None:
            return
        if entry.tenure is not tenure:
            del self._entries[chat]
            return
        entry.turns.extend(turns)
        caps = [n for n in (entry.window, max_turns) if n is not None]
        if caps and len(entry.turns) > min(caps):
            del entry.turns[: -min(caps)]
        for key, amount in (counters or {}).items():
            entry.state[key] = str(int(entry.state.get(key, "0")) + amount)
        entry.expires = _deadline(ttl)

    def drop(self, chat: str) -> None:
        self.epoch += 1
        self._entries.pop(chat, None)


def _deadline(ttl: float | None) -> float | None:
    # A little early: the copy must never outlive the keys Redis expires.
    return None if ttl is None else time.monotonic() + max(0.0, ttl - 1.0)

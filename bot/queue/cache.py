"""A worker's copy of the chats it answers, valid while it holds their partition's lease.

While a worker holds partition N's lease it is the only process that runs jobs of N's chats, so
it is also the only writer of their history (an operating requirement: nothing else may write
the chats of a queue-served bot, e.g. ``fmbot console`` on a Telegram chat key, or a ``--role
all`` process on the same keys): what it read and wrote during that tenure is what Redis holds.
The journaled store keeps that copy and answers the next turn's ``load`` from it, which saves a
round trip and decoding the whole history on every turn.

An entry is used only by a job of the same tenure (the :class:`~bot.queue.partition
.PartitionRunner` that read the job; a lease lost or re-created and taken again is a new
tenure, which reads Redis afresh), only while Redis would still hold the chat (the history TTL,
counted from the entry's last write; with a TTL set, an entry filled by a read is used only
after this worker's first write, which is when it learns the deadline), and only for a window
no longer than what it was filled with. Every write is checked against what Redis reports
(whether the chat's list existed, its length after): unless Redis holds exactly the remembered
turns plus the new ones — the keys expired, something else wrote — the entry is dropped. Writes
the copy does not model (``/new``, ``/mode``, ``/forget``, a failed or uncertain write, a job
outside its chat's lane) drop it too, and a read that overlapped such a write is not kept.
"""

from __future__ import annotations

import collections
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bot.stores.base import Turn

#: Memory for the copies (FMBOT_WORKER_CACHE_MB), least recently used chat dropped first. Sized
#: in bytes, not chats: a worker serving 20,000 short chats keeps them all, one serving long
#: ones keeps fewer, and neither runs out of memory.
DEFAULT_MB = 256
_TURN_OVERHEAD = 400  # a Turn, its meta dict and the list slot, beyond the text (CPython 3.11)
_ENTRY_OVERHEAD = 600  # an entry, its state dict and the index slot


def _turn_size(turn: Turn) -> int:
    return sys.getsizeof(turn.text) + _TURN_OVERHEAD


def _size(state: Mapping[str, str], turns: Sequence[Turn]) -> int:
    """About the memory an entry takes: what bounds the cache."""
    fields = sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in state.items())
    return _ENTRY_OVERHEAD + fields + sum(map(_turn_size, turns))


@dataclass(slots=True)
class _Entry:
    tenure: object
    state: dict[str, str]
    turns: list[Turn]
    window: int | None  # the ``last`` it was read with; None: every stored turn
    expires: float | None  # monotonic time at which Redis forgets the chat (history TTL)
    length: int  # the length of the chat's turns list in Redis, as last seen
    size: int = 0  # bytes, about (see _size)


class ChatCache:
    def __init__(self, max_bytes: int = DEFAULT_MB * 2**20) -> None:
        self.max_bytes = max_bytes
        self.size = 0  # bytes held, about
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
        length: int,
    ) -> None:
        """Remember what a read that started at ``epoch`` returned for ``chat`` (``length``: the
        turns list's length in Redis)."""
        if epoch != self.epoch:
            return  # a drop happened meanwhile: the read may predate that write
        # With a TTL, when Redis expires the chat depends on its last write, unknown here:
        # usable from this worker's first write on (appended() sets the deadline).
        expires = None if ttl is None else time.monotonic()
        self._forget(chat)
        entry = _Entry(tenure, dict(state), list(turns), last, expires, length, _size(state, turns))
        self._entries[chat] = entry
        self.size += entry.size
        self._evict()

    def appended(
        self,
        chat: str,
        tenure: object,
        turns: Sequence[Turn],
        counters: Mapping[str, int] | None,
        *,
        max_turns: int | None,
        ttl: float | None,
        existed: bool,
        length: int,
        sent: float,
    ) -> None:
        """Apply a write Redis confirmed. ``existed`` and ``length`` are what Redis reported
        (the turns list existed before; its length after), ``sent`` when the write was sent
        (monotonic): Redis's TTL runs from then. The entry is dropped unless Redis's list is
        exactly the remembered one plus ``turns`` (it expired, or something else wrote)."""
        entry = self._entries.get(chat)
        if entry is None:
            self.epoch += 1  # a read of this chat in flight may predate this write
            return
        expected = entry.length + len(turns)
        if max_turns is not None:
            expected = min(expected, max_turns)
        if entry.tenure is not tenure or length != expected or (entry.length and not existed):
            self.drop(chat)
            return
        try:
            for key, amount in (counters or {}).items():
                entry.state[key] = str(int(entry.state.get(key, "0")) + amount)
        except ValueError:  # a counter that is not a number in Redis: let Redis answer
            self.drop(chat)
            return
        entry.turns.extend(turns)
        grown = sum(map(_turn_size, turns))
        caps = [n for n in (entry.window, max_turns) if n is not None]
        if caps and len(entry.turns) > min(caps):
            grown -= sum(map(_turn_size, entry.turns[: -min(caps)]))
            del entry.turns[: -min(caps)]
        entry.size += grown
        self.size += grown
        self._entries.move_to_end(chat)
        entry.length = length
        entry.expires = None if ttl is None else sent + max(0.0, ttl - 1.0)

        self._evict()

    def drop(self, chat: str) -> None:
        self.epoch += 1
        self._forget(chat)

    def _forget(self, chat: str) -> None:
        entry = self._entries.pop(chat, None)
        if entry is not None:
            self.size -= entry.size

    def _evict(self) -> None:
        # The newest entry stays even alone over the bound: its chat is the one being answered.
        while self.size > self.max_bytes and len(self._entries) > 1:
            _chat, entry = self._entries.popitem(last=False)
            self.size -= entry.size

"""Albums: several photos sent together are one question, answered once.

Telegram delivers an album as one update per item, sharing a ``media_group_id`` (the caption on
one of them), and nothing marks the last item: an album is complete once no item has come for
:data:`ALBUM_QUIET` seconds. The first item to arrive is handled with ``data["album"]`` (every
item, in message order); the others are absorbed into it.

* ``--role all``: :class:`AlbumCollector`, an outer middleware on the dispatcher's updates.
  Every update runs in its own task, so the first item can wait while the others arrive.
* ``--role worker``: the ingress queues every item as its own job, as any update (so a
  confirmed update is always a queued one, and the webhook's one-at-a-time deliveries are
  answered at once). A chat's jobs run in order, so the first item's job cannot wait for the
  others to be *handled*; it reads them from its partition's stream instead
  (:class:`QueuedAlbums`), where they wait behind it, and the worker skips them when their turn
  comes. In a group every member's messages share the chat's lane, so another member's message
  may be queued between two items: it is passed over (answered in its own job, after the album,
  as it came after the album's first item), not taken for the album's end. The album's turn is
  journaled under its first item's job (not the last item's: the answered marker would then
  count a message queued between the items as stored), and the items answered with it are
  recorded in Redis (``P:{chat}:album:GROUP``) before it is answered, so a worker that takes the
  jobs over after a crash skips them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from aiogram import BaseMiddleware
from aiogram.dispatcher.event.bases import UNHANDLED
from aiogram.types import Message, TelegramObject, Update

from adapters.telegram.inflight import Handler
from bot.busy import arrival_hook
from bot.observe import messaging
from bot.queue import Job, QueueKeys
from bot.queue.journal import MARKER_TTL
from bot.redis import RedisClient

#: Seconds without a new item after which an album is complete. Telegram delivers an album's
#: items within a fraction of a second of each other.
ALBUM_QUIET = 1.0
#: An album still growing after this long is answered with what has come (an album has at most
#: 10 items; this only bounds the wait).
ALBUM_MAX_WAIT = 10.0
#: Queued jobs after the first item read to find the others (other chats' jobs are among them).
LOOKAHEAD = 200
_POLL = 0.1  # seconds between two looks at the stream while an album is collected


def sorted_items(messages: list[Message]) -> list[Message]:
    return sorted(messages, key=lambda m: m.message_id)


class _Album:
    def __init__(self, first: Message) -> None:
        self.items = [first]
        self._grew = asyncio.Event()
        #: Set once the album's turn has taken its place in the dialog manager (or ended).
        self.arrived = asyncio.Event()

    def add(self, message: Message) -> None:
        self.items.append(message)
        self._grew.set()

    async def complete(self, quiet: float, max_wait: float) -> None:
        """Return once no item came for ``quiet`` seconds (or ``max_wait`` passed)."""
        deadline = time.monotonic() + max_wait
        while (remaining := deadline - time.monotonic()) > 0:
            self._grew.clear()
            try:
                async with asyncio.timeout(min(quiet, remaining)):
                    await self._grew.wait()
            except TimeoutError:
                return


class AlbumCollector(BaseMiddleware):
    """``--role all``: the first item of an album waits for the rest and is handled with them
    all as ``data["album"]``; the others end here. A chat's messages sent after an album wait
    until the album's turn has reached the dialog manager, so they are answered after it, as
    they were sent. An update already given its album (by a queue worker, :class:`QueuedAlbums`)
    passes through."""

    def __init__(self, quiet: float = ALBUM_QUIET, max_wait: float = ALBUM_MAX_WAIT) -> None:
        self.quiet = quiet
        self.max_wait = max_wait
        self._open: dict[tuple[int, str], _Album] = {}
        self._pending: dict[int, list[_Album]] = {}  # by chat: albums not yet in the manager

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        message = event.message if isinstance(event, Update) else None
        if message is None or "album" in data:
            return await handler(event, data)
        chat = message.chat.id
        earlier = list(self._pending.get(chat, ()))
        if message.media_group_id is None:
            await self._arrived(earlier)
            return await handler(event, data)
        key = (chat, message.media_group_id)
        album = self._open.get(key)
        if album is not None:
            album.add(message)  # answered with the first item
            return UNHANDLED
        album = self._open[key] = _Album(message)
        self._pending.setdefault(chat, []).append(album)
        try:
            try:
                await album.complete(self.quiet, self.max_wait)
            finally:
                del self._open[key]
            await self._arrived(earlier)
            data["album"] = sorted_items(album.items)
            outer = arrival_hook.get()

            def arrived() -> None:
                album.arrived.set()
                if outer is not None:
                    outer()

            token = arrival_hook.set(arrived)
            try:
                return await handler(event, data)
            finally:
                arrival_hook.reset(token)
        finally:
            album.arrived.set()
            pending = self._pending[chat]
            pending.remove(album)
            if not pending:
                del self._pending[chat]

    async def _arrived(self, albums: list[_Album]) -> None:
        """Wait for ``albums`` to reach the manager; bounded, should one never get there."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.max_wait + self.quiet):
                for album in albums:
                    await album.arrived.wait()


@dataclass(frozen=True, slots=True)
class QueuedAlbum:
    messages: list[dict[str, Any]]  # every item's message as queued, the first item's first


class QueuedAlbums:
    """``--role worker``: the rest of an album, read from the stream behind its first item."""

    def __init__(
        self,
        redis: RedisClient,
        keys: QueueKeys,
        *,
        quiet: float = ALBUM_QUIET,
        max_wait: float = ALBUM_MAX_WAIT,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.quiet = quiet
        self.max_wait = max_wait
        self._absorbed: set[tuple[str, str]] = set()  # (chat, entry id) of items answered

    async def absorbed(self, job: Job, group: str) -> bool:
        """Whether ``job``, an item of album ``group``, was answered with an earlier item: by
        this worker (remembered, asked once per job) or, for a job taken over after a crash,
        by any (the album's record in Redis)."""
        key = (job.chat, job.id)
        if key in self._absorbed:
            self._absorbed.discard(key)
            return True
        recorded = await self.redis.get(self.keys.album(job.chat, group))
        if recorded is None:
            return False
        first, _, last = _text(recorded).partition(" ")
        return _entry(first) < _entry(job.id) <= _entry(last)

    async def collect(self, job: Job, group: str) -> QueuedAlbum:
        """Wait until no item of album ``group`` has been queued for ``quiet`` seconds; the
        items so far, recorded as answered by ``job`` (before it answers them, so that a worker
        taking the jobs over after a crash skips them). The chat's other jobs in between (in a
        group, other members' messages) are passed over; a new message from the album's sender
        ends it (its turn must come after the album's)."""
        deadline = time.monotonic() + self.max_wait
        items: list[_Item] = []
        changed = time.monotonic()
        while True:
            found = await self._items(job, group)
            now = time.monotonic()
            if len(found) != len(items):
                items, changed = found, now
            if now - changed >= self.quiet or now >= deadline:
                break
            await asyncio.sleep(_POLL)
        if items:
            record = f"{job.id} {items[-1].entry}"
            await self.redis.set(self.keys.album(job.chat, group), record, ex=MARKER_TTL)
        self._absorbed.update((job.chat, item.entry) for item in items)
        # Answered in this job: its process span links to each item's enqueue (a batch).
        messaging.link_created(item.trace for item in items)
        messages = [job.payload["message"], *(item.message for item in items)]
        return QueuedAlbum(messages)

    async def _items(self, job: Job, group: str) -> list[_Item]:
        stream = self.keys.jobs(job.partition)
        entries = cast(
            "list[tuple[Any, Mapping[Any, Any]]]",  # str or bytes, by client
            await self.redis.xrange(stream, min=f"({job.id}", max="+", count=LOOKAHEAD),
        )
        sender = _sender(job.payload["message"])
        items = []
        for raw_id, fields in entries or []:
            values = {_text(k): _text(v) for k, v in fields.items()}
            if values.get("chat") != job.chat:
                continue  # another chat of the partition
            try:
                update = json.loads(values.get("payload", ""))
            except ValueError:
                continue  # not an item; its own job fails
            message = update.get("message") if isinstance(update, dict) else None
            if not isinstance(message, dict):
                continue  # an edit, a button press…: not a new message
            if message.get("media_group_id") == group:
                items.append(_Item(_text(raw_id), message, messaging.context_of(values)))
            elif _sender(message) == sender:
                break  # the sender's next message: the album is over
            # else another member's message, answered in its own job after the album
        return items


@dataclass(frozen=True, slots=True)
class _Item:
    """An album item queued behind the first: its entry id, message and trace context."""

    entry: str
    message: dict[str, Any]
    trace: dict[str, str] | None


def _sender(message: Mapping[str, Any]) -> tuple[object, object]:
    """Who sent ``message``: the user, and the chat it was sent on behalf of (if any)."""
    user, on_behalf = message.get("from"), message.get("sender_chat")
    return (
        user.get("id") if isinstance(user, dict) else None,
        on_behalf.get("id") if isinstance(on_behalf, dict) else None,
    )


def _entry(entry_id: str) -> tuple[int, int]:
    """A stream entry id, comparable in time order ("10-0" after "9-0")."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

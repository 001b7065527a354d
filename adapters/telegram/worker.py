"""``fmbot telegram --role worker``: answer queued Telegram updates with the usual handlers.

Each job is an update the ingress queued; it goes through the same aiogram Dispatcher and
handlers as ``--role all``, so replies (drafts, edits, splitting) are identical. A chat's jobs run
one at a time in arrival order (with FMBOT_BUSY_POLICY ``merge`` or ``interrupt`` a chat's next
update starts once the previous one has reached the dialog manager, so the policy sees it arrive
while the turn runs, as with ``--role all``). Two things keep that from changing what users see:

* ``/stop``, the draft's stop button and /mode keyboard presses skip their chat's lane
  (``immediate``): queued behind the turn they are meant to stop, they would arrive after it.
* A job redelivered after a worker died is skipped when its turn is already stored (the manager
  runs on :class:`~bot.queue.journal.JournaledRedisStore`), so it is not answered twice. If the
  worker had stored the reply but stopped before Telegram confirmed sending it (the turn was not
  marked delivered), the stored reply is sent instead: the user gets it, at worst twice, never
  not at all. Only the job that delivered a turn marks it, naming the job the turn is stored as:
  with ``merge`` or ``interrupt`` a chat's other jobs (messages merged into the turn, group
  chatter not meant for the bot) may finish while its reply is still on its way.
* A reply Telegram did not take after the outbox's retries (network down, 5xx, repeated 429)
  fails the job: it is run again and sends the stored reply, and is marked delivered only once
  Telegram confirmed it. A refusal (the user blocked the bot, no right to write in the group) is
  final: logged, and the job is done.
* An album arrives as one job per item: the first item's job answers them all and the others are
  skipped (:mod:`adapters.telegram.albums`).
"""

from __future__ import annotations

import logging
from typing import Any

from aiogram.types import Message, Update

from adapters.telegram.albums import QueuedAlbums, sorted_items
from adapters.telegram.app import TelegramApp
from adapters.telegram.target import Target
from bot.commands import parse_command
from bot.dialog import stored_sources
from bot.errors import GivenUpError, StoreError
from bot.events import sources_line
from bot.observe import metrics
from bot.queue import Job, QueueKeys, Worker
from bot.queue.journal import JournaledRedisStore
from bot.queue.partition import Tuning
from bot.queue.worker import LEASE_MS
from bot.redis import RedisClient

log = logging.getLogger(__name__)

#: Updates that act on a turn in progress rather than start one.
_IMMEDIATE_KINDS = ("callback_query", "stopped_message_generation")


def is_immediate(job: Job) -> bool:
    """Whether the job must not wait for its chat's running turn (see the module docstring)."""
    update = job.payload
    if any(kind in update for kind in _IMMEDIATE_KINDS):
        return True
    message: Any = update.get("message")
    text = message.get("text") if isinstance(message, dict) else None
    if not isinstance(text, str):
        return False
    text = text.strip()
    if text.startswith("@"):  # "@bot /stop" in a group
        text = text.partition(" ")[2].strip()
    command = parse_command(text)
    return command is not None and command.name == "stop"


class TelegramWorker:
    """A queue :class:`Worker` whose handler feeds each update to the app's Dispatcher."""

    def __init__(
        self,
        app: TelegramApp,
        redis: RedisClient,
        keys: QueueKeys,
        *,
        lease_ms: int = LEASE_MS,
        name: str | None = None,
    ) -> None:
        store = app.manager.store
        if not isinstance(store, JournaledRedisStore):
            raise TypeError("TelegramWorker needs a manager on a JournaledRedisStore")
        self.app = app
        self.store: JournaledRedisStore = store
        # A store error before the reply began is retried with the job (it stays queued), not
        # answered "send it again": see Worker.
        app.manager.raise_store_errors = True
        # A reply Telegram could not take (an outage, flood control) fails the job instead of
        # being marked delivered: the retry finds the turn stored and sends the stored reply.
        app.replies.raise_transient = True
        app.replies.on_delivered = self._turn_delivered
        # A reply cut off (shutdown past the grace, lost lease) is sent by the job's next run.
        app.replies.rerun_cut_off = True
        self.skipped = 0  # redelivered jobs whose turn was already stored
        self.albums = QueuedAlbums(redis, keys)
        self.worker = Worker(
            redis,
            self.handle,
            keys=keys,
            lease_ms=lease_ms,
            name=name,
            tuning=Tuning(immediate=is_immediate, overlap=app.manager.busy.overlaps),
        )

    async def handle(self, job: Job) -> None:
        bot = self.app.bot
        update = Update.model_validate(job.payload, context={"bot": bot})
        # Unordered (immediate) jobs store no turn of their own: nothing to look up.
        ordered_replay = job.redelivered and job.ordered
        replay = await self.store.replay(job.chat, job.id) if ordered_replay else None
        if replay is not None and replay.answered:
            self.skipped += 1
            if replay.reply is not None and update.message is not None:
                log.info("job %s: sending the reply a stopped worker had stored", job.id)
                target = Target.of(update.message)
                text, complete = replay.reply.text, replay.complete
                if sources := stored_sources(replay.reply):  # as the first delivery ended
                    text = f"{text}\n\n{sources_line(sources)}"
                await self.app.replies.redeliver(target, text, complete=complete)
                if replay.stored_as is not None:
                    await self._delivered(job.chat, replay.stored_as)
            else:
                log.info("job %s was answered before a worker restart; skipped", job.id)
            return
        group = update.message.media_group_id if update.message is not None else None
        # Exceptions propagate: the queue retries the job, or buries it after repeated failures.
        if group is not None and job.ordered:
            await self._album(job, update, group)
        else:
            await self.app.dispatcher.feed_update(bot, update)

    async def _album(self, job: Job, update: Update, group: str) -> None:
        """An album's item: the first one answers the album (see :mod:`.albums`), the others
        were answered with it (by this worker or, its record in Redis says, another) and skipped."""
        if (
            await self.albums.absorbed(job, group)
            or (await self.store.replay(job.chat, job.id)).answered
        ):
            log.info("job %s: an album item answered with the album", job.id)
            return
        album = await self.albums.collect(job, group)
        bot = self.app.bot
        messages = [Message.model_validate(m, context={"bot": bot}) for m in album.messages]
        # Journaled under this (the first) item's job: the others are recorded by collect.
        await self.app.dispatcher.feed_update(bot, update, album=sorted_items(messages))

    async def _turn_delivered(self, chat: str, turn_id: str) -> None:
        """Replies delivered a turn in this job's handler: mark the job it is stored as."""
        stored_as = self.store.stored_as(turn_id)
        if stored_as is not None:  # else not stored by this worker: nothing to mark
            await self._delivered(chat, stored_as)

    async def _delivered(self, chat: str, stored_as: str) -> None:
        try:
            await self.store.delivered(chat, stored_as)
        except StoreError as exc:  # raising would run the job again: a second reply
            if not isinstance(exc, GivenUpError):  # a lease loss, counted as one (not Redis's)
                metrics.store_error(exc)  # answered here: no retry loop counts it
            log.warning("could not record the delivery of job %s's reply (%s)", stored_as, exc)

    async def run(self) -> None:
        await self.worker.run()

    async def stop(self, grace: float) -> None:
        """Let replies in progress finish (up to ``grace`` s), then hand the partitions over."""
        await self.worker.stop(grace)

"""Running one reply from the dialog manager to the chat, and stopping it on request.

Each reply consumes ``DialogManager.handle`` in its own task. /stop and the draft's stop button
(a ``stopped_message_generation`` update) cancel that task: the manager's generator is closed,
the model stops and the partial reply is stored as "stopped"; here the partial text is then
delivered marked "(stopped)".
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError

from adapters.telegram import spans
from adapters.telegram.actions import ChatAction
from adapters.telegram.outbox import TRANSIENT, Outbox
from adapters.telegram.preview import ReplyPreview
from adapters.telegram.settings import TelegramSettings
from adapters.telegram.target import Target
from adapters.telegram.throttle import Throttle
from bot.dialog import DialogManager
from bot.events import FinalText, ImageReply, Incoming, Notice, TextDelta, sources_line
from bot.observe import metrics
from bot.observe.metrics import TurnInfo

log = logging.getLogger(__name__)

STOPPED_MARK = "(stopped)"
#: Seconds a reply cut off by a shutdown (or a lost lease) may spend tidying its preview up.
CUT_OFF_CLEANUP = 2.5
_NOTICE_PREFIX = {"info": "", "warning": "⚠️ ", "error": "⚠️ "}


def stopped_text(partial: str) -> str:
    partial = partial.rstrip()
    return f"{partial} … {STOPPED_MARK}" if partial else STOPPED_MARK


@dataclass(eq=False)
class ActiveReply:
    target: Target
    draft_id: int | None
    text: str = ""  # streamed so far
    stoppable: bool = True  # False once the complete text is being delivered
    stopped: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    #: The turn answering it, once it started (its span is the deliveries' parent).
    turn: TurnInfo | None = field(default=None, repr=False)

    def stop(self) -> bool:
        if not self.stoppable or self.task is None or self.task.done():
            return False
        self.stopped = True
        self.task.cancel()
        return True


class Replies:
    def __init__(
        self, bot: Bot, manager: DialogManager, settings: TelegramSettings, throttle: Throttle
    ) -> None:
        self.bot = bot
        self.manager = manager
        self.settings = settings
        self.throttle = throttle
        self.outbox = Outbox(bot, throttle)
        #: Let a transient delivery failure (outage, flood control past the outbox's retries)
        #: out of :meth:`run`. A queue worker sets it: the job is run again and sends the stored
        #: reply. Without a queue (``--role all``) nothing would retry: the failure is logged.
        self.raise_transient = False
        #: Called with the chat's key and the turn's id (``TurnInfo.id``) once :meth:`run` has
        #: delivered a turn's reply (or Telegram refused it for good), before it returns. A
        #: queue worker marks the turn delivered here: only the job that delivered a turn may
        #: (with overlapping jobs, another may finish while this one's reply is on its way).
        self.on_delivered: Callable[[str, str], Awaitable[None]] | None = None
        #: A reply cut off (shutdown past the grace, lost lease) is answered again by the job's
        #: next run (a queue worker sets it): its preview message is then deleted, not left.
        self.rerun_cut_off = False
        self._cleanups: set[asyncio.Task[None]] = set()
        self._active: dict[str, list[ActiveReply]] = {}
        self._no_drafts: set[int] = set()
        # Draft ids only need to differ between replies in flight; a random start keeps a
        # restarted bot from reusing the ids of drafts still on screen.
        self._draft_ids = itertools.count(secrets.randbelow(2**30) + 1)

    # --- stopping ---

    def stop(self, key: str) -> bool:
        """Stop the replies in progress (and queued) in this conversation."""
        return any([reply.stop() for reply in self._active.get(key, [])])

    def stop_draft(self, chat_id: int, draft_id: int) -> bool:
        for replies in self._active.values():
            for reply in replies:
                if reply.target.chat_id == chat_id and reply.draft_id == draft_id:
                    return reply.stop()
        return False

    def busy(self, key: str) -> bool:
        return bool(self._active.get(key))

    # --- running ---

    async def redeliver(self, target: Target, text: str, *, complete: bool = True) -> None:
        """Send a stored reply whose delivery was cut off (its worker stopped in between)."""
        preview = self._preview(target, draft_id=None)
        try:
            with spans.delivering(None, preview, "redelivered"):
                await preview.finish(text if complete else stopped_text(text))
        except TRANSIENT:
            raise  # may well get through later: the job is run again
        except TelegramAPIError as exc:  # refused (blocked, chat gone): it never will
            log.warning("could not deliver a reply in chat %s: %s", target.chat_id, exc.message)

    async def run(self, target: Target, incoming: Incoming) -> None:
        """Answer ``incoming`` in ``target``; returns when the reply is delivered or stopped."""
        drafts = target.private and target.chat_id not in self._no_drafts
        draft_id = next(self._draft_ids) % (2**31 - 1) + 1 if drafts else None
        preview = self._preview(target, draft_id)
        reply = ActiveReply(target, draft_id)
        self._active.setdefault(target.key, []).append(reply)
        try:
            reply.task = asyncio.create_task(self._consume(reply, preview, incoming))
            try:
                await asyncio.wait({reply.task})
            except asyncio.CancelledError:  # shutdown ran out of time: stop the turn too
                reply.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reply.task
                await self._cut_off(reply, preview)
                raise
            if reply.task.cancelled():
                # The turn has ended: its lines (and spans) name it again while delivering.
                with metrics.within(reply.turn), spans.delivering(reply.turn, preview, "stopped"):
                    await preview.finish(stopped_text(reply.text))
            else:
                reply.task.result()
        except TelegramAPIError as exc:
            if self.raise_transient and isinstance(exc, TRANSIENT):
                raise  # not marked delivered: the job's next run sends the stored reply
            with metrics.within(reply.turn):
                log.warning("could not deliver a reply in chat %s: %s", target.chat_id, exc.message)
        finally:
            replies = self._active.get(target.key, [])
            replies.remove(reply)
            if not replies:
                self._active.pop(target.key, None)
        if reply.turn is not None and self.on_delivered is not None:
            await self.on_delivered(target.key, reply.turn.id)

    async def _cut_off(self, reply: ActiveReply, preview: ReplyPreview) -> None:
        """Leave the chat matching what happens next to a reply cut off mid-way.

        With a queue the job runs again and sends the reply (or the stored partial one): the
        preview message goes, so that is the only one. Without, the partial answer is stored
        as stopped: the user gets it marked so (a draft alone would just vanish). Best effort
        and short (this runs during a shutdown), shielded from a further cancellation.
        """
        if self.rerun_cut_off:
            if preview.message_id is None:
                return
            cleanup = self._delete_preview(reply.target, preview.message_id)
        elif reply.text and reply.stoppable:  # else the final text was under way, or nothing
            cleanup = preview.finish(stopped_text(reply.text))
        else:
            return
        task = asyncio.create_task(self._bounded(reply, cleanup))
        self._cleanups.add(task)  # kept alive if a second cancellation cuts the wait short
        task.add_done_callback(self._cleanups.discard)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)

    async def _delete_preview(self, target: Target, message_id: int) -> None:
        await self.bot.delete_message(chat_id=target.chat_id, message_id=message_id)

    async def _bounded(self, reply: ActiveReply, cleanup: Awaitable[None]) -> None:
        try:
            async with asyncio.timeout(CUT_OFF_CLEANUP):
                await cleanup
        except (TelegramAPIError, TimeoutError) as exc:
            with metrics.within(reply.turn):
                log.warning(
                    "could not tidy up a reply cut off in chat %s: %s",
                    reply.target.chat_id,
                    getattr(exc, "message", None) or "timed out",
                )

    def _preview(self, target: Target, draft_id: int | None) -> ReplyPreview:
        return ReplyPreview(
            self.bot,
            self.outbox,
            self.throttle,
            target,
            interval=self.settings.interval_for(target.private),
            draft_id=draft_id,
            drafts_refused=self._no_drafts.add,
        )

    async def _notice(self, target: Target, notice: Notice) -> None:
        """Best effort: a lost progress line or warning must not cancel the answer under way
        (the turn would be stored as stopped)."""
        try:
            await self.outbox.send_text(target, _NOTICE_PREFIX[notice.kind] + notice.text)
        except TelegramAPIError as exc:
            log.warning("could not send a notice in chat %s: %s", target.chat_id, exc.message)

    async def _consume(self, reply: ActiveReply, preview: ReplyPreview, incoming: Incoming) -> None:
        target = reply.target
        finished = False
        # "typing" until the first piece of the answer; "upload_photo" while a picture is drawn.
        async with contextlib.AsyncExitStack() as stack:
            waiting = await stack.enter_async_context(ChatAction(self.bot, target, "typing"))
            events = await stack.enter_async_context(
                contextlib.aclosing(self.manager.handle(incoming))
            )
            async for event in events:
                if reply.turn is None:
                    reply.turn = metrics.current_turn.get()
                if isinstance(event, TextDelta):
                    await waiting.stop()
                    reply.text += event.text
                    await preview.update(reply.text)
                elif isinstance(event, FinalText):
                    await waiting.stop()
                    reply.stoppable = False
                    # The sources as a short last line of the same message.
                    sources = f"\n\n{sources_line(event.sources)}" if event.sources else ""
                    how = "complete" if event.complete else "partial"
                    with spans.delivering(reply.turn, preview, how):
                        await preview.finish(event.text + sources)
                    finished = True
                elif isinstance(event, Notice):
                    await waiting.stop()
                    await self._notice(target, event)
                    if event.progress is not None:  # still under way: keep showing it
                        action = "upload_photo" if event.progress == "image" else "typing"
                        waiting = ChatAction(self.bot, target, action)
                        await stack.enter_async_context(waiting)
                elif isinstance(event, ImageReply):
                    await waiting.stop()
                    await self.outbox.send_photo(target, event.data, event.mime_type, event.prompt)
        if reply.text and not finished:  # the manager ended without a final text
            reply.stoppable = False
            with metrics.within(reply.turn), spans.delivering(reply.turn, preview, "partial"):
                await preview.finish(reply.text)

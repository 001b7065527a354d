"""``fmbot telegram --role ingress``: take updates from Telegram into the Redis work queue.

An update is confirmed to Telegram only after :meth:`bot.queue.Ingress.enqueue` returned (Redis
has it): when polling, the next getUpdates offset passes an update only once it is queued; a
webhook request is answered 200 only then, and 503 while Redis is unreachable, so Telegram
delivers it again. Updates are queued under their update id, so one delivered twice (a crash
between enqueue and confirmation) becomes one job. No dialog manager, no model.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from typing import Any

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError, TelegramUnauthorizedError
from aiogram.methods import GetUpdates
from aiogram.types import Chat, InaccessibleMessage, Message, Update
from aiohttp import web
from pydantic import ValidationError

from adapters.telegram.target import Target
from adapters.telegram.webhook import SECRET_HEADER, problem
from bot.errors import ConfigError, StoreError
from bot.observe import metrics
from bot.queue import Ingress
from bot.queue.backoff import Backoff
from bot.text import clean

log = logging.getLogger(__name__)

#: What the worker's router handles (TelegramApp.allowed_updates(); a test keeps them equal).
#: The ingress builds no router, so it asks Telegram for exactly these.
ALLOWED_UPDATES = ["callback_query", "message", "stopped_message_generation"]
#: Conversation key of the rare update that belongs to no chat.
NO_CHAT = "tg:-"


def chat_key(update: Update) -> str:
    """The key the worker keeps the update's conversation under (:class:`Target`), so the
    queue orders a chat's updates as the dialog sees them."""
    if update.message is not None:
        return Target.of(update.message).key
    query = update.callback_query
    if query is not None and isinstance(query.message, Message):
        return Target.of(query.message).key
    if query is not None and isinstance(query.message, InaccessibleMessage):
        return Target.of_chat(query.message.chat, None).key
    if update.stopped_message_generation is not None:
        event = update.stopped_message_generation
        return Target.of_chat(event.chat, event.message_thread_id).key
    chat = getattr(update.event, "chat", None)
    return Target.of_chat(chat, None).key if isinstance(chat, Chat) else NO_CHAT


def payload(update: Update) -> dict[str, Any]:
    """The update as Telegram sent it (field aliases such as ``from``), for the worker.

    A lone surrogate (JSON ``"\\ud800"`` in a forged update) becomes U+FFFD: Redis takes UTF-8
    only, and U+FFFD keeps the UTF-16 entity offsets (one unit each)."""
    dumped: dict[str, Any] = _cleaned(
        update.model_dump(mode="json", exclude_none=True, by_alias=True)
    )
    return dumped


def _cleaned(value: Any) -> Any:
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {_cleaned(k): _cleaned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cleaned(v) for v in value]
    return value


async def enqueue(ingress: Ingress, update: Update) -> None:
    """Durably queue ``update``; StoreError when Redis is unreachable (do not confirm it)."""
    await ingress.enqueue(chat_key(update), payload(update), dedupe=str(update.update_id))


class PollingIngress:
    """Our own getUpdates loop: aiogram's polling confirms updates before they are handled."""

    def __init__(
        self, bot: Bot, ingress: Ingress, *, timeout: int = 30, retry_cap: float = 2.0
    ) -> None:
        self.bot = bot
        self.ingress = ingress
        self.timeout = timeout
        self.retry_cap = retry_cap  # Redis or Telegram down: how long a retry may wait at most
        self.offset: int | None = None  # next update id to ask for: everything below is queued
        self.queued = 0
        self._sent_offset: int | None = None
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        # getUpdates answers 409 while a webhook is set.
        await self.bot.delete_webhook(drop_pending_updates=False)
        backoff = Backoff(cap=self.retry_cap)
        while not self._stop.is_set():
            try:
                updates = await self._poll()
            except TelegramUnauthorizedError:
                raise ConfigError(
                    "TELEGRAM_BOT_TOKEN", "********", "Telegram rejected the token (401)"
                ) from None
            except TelegramAPIError as exc:
                delay = backoff.next()
                log.warning("getUpdates failed (%s); retry in %.1fs", exc.message, delay)
                await self._sleep(delay)
                continue
            if updates is None:  # stopped while waiting
                break
            if await self._enqueue_all(updates):
                backoff.reset()
            else:
                # Not queued: keep the offset, so Telegram hands the same updates out again.
                await self._sleep(backoff.next())
        await self._confirm()

    async def _poll(self) -> list[Update] | None:
        method = GetUpdates(
            offset=self.offset, timeout=self.timeout, allowed_updates=ALLOWED_UPDATES
        )
        # The HTTP request must outlive the long poll (aiogram's polling does the same).
        request_timeout = int((self.bot.session.timeout or 60) + self.timeout)
        poll = asyncio.create_task(self.bot(method, request_timeout=request_timeout))
        stopping = asyncio.create_task(self._stop.wait())
        await asyncio.wait({poll, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not poll.done():  # stopping: nothing fetched, nothing to queue
            poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poll
            return None
        self._sent_offset = self.offset
        return poll.result()

    async def _enqueue_all(self, updates: list[Update]) -> bool:
        """Queue in order, moving the offset past each queued update; False on a Redis error."""
        for update in updates:
            if self.offset is not None and update.update_id < self.offset:
                metrics.count(metrics.INGRESS_UPDATES, 1, "duplicate")
                continue  # already queued (and not yet confirmed) in an earlier batch
            try:
                await enqueue(self.ingress, update)
            except StoreError as exc:
                log.warning("update %s not queued (%s); will retry", update.update_id, exc)
                return False
            self.offset = update.update_id + 1
            self.queued += 1
        return True

    async def _confirm(self) -> None:
        """On the way out: confirm what was queued; the rest stays with Telegram."""
        if self.offset is None or self.offset == self._sent_offset:
            return
        try:
            await self.bot(GetUpdates(offset=self.offset, limit=1, timeout=0))
        except TelegramAPIError as exc:
            log.warning("could not confirm queued updates (they will be deduplicated): %s", exc)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)


def webhook_app(ingress: Ingress, secret: str, path: str) -> web.Application:
    """An aiohttp app answering Telegram's webhook POSTs at ``path``."""

    async def receive(request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), secret.encode()):
            return web.Response(status=401)
        try:
            update = Update.model_validate(await request.json())
        except (ValueError, ValidationError) as exc:
            # Not from Telegram (which sends only updates): refused as --role all refuses it.
            log.warning("webhook: answered 400 to a request that is no update (%s)", problem(exc))
            return web.Response(status=400, text="not a Telegram update")
        try:
            await enqueue(ingress, update)
        except StoreError as exc:
            log.warning("update %s not queued (%s); Telegram will retry", update.update_id, exc)
            return web.Response(status=503, text="queue unavailable")
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post(path, receive)
    return app

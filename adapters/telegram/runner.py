"""Running the bot: long polling or a webhook server, and a shutdown that loses no message.

On SIGTERM/SIGINT (or :meth:`Runner.request_stop`) the bot stops taking updates, lets the
replies in progress finish (up to TELEGRAM_SHUTDOWN_GRACE seconds), and, when polling, confirms
the updates it handled with one last getUpdates, so a redeploy neither loses nor repeats them.
A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

from aiogram import Bot
from aiogram.exceptions import ClientDecodeError, TelegramAPIError, TelegramUnauthorizedError
from aiogram.methods import GetUpdates
from aiogram.webhook.aiohttp_server import setup_application
from aiohttp import web

from adapters.telegram.app import NotBotApiError, TelegramApp
from adapters.telegram.commands import MENU
from adapters.telegram.redact import redact, secrets_redacted
from adapters.telegram.settings import TelegramSettings
from adapters.telegram.webhook import WebhookHandler
from bot import urls
from bot.errors import ConfigError, FmbotError
from bot.observe.server import serving as metrics_served
from bot.settings import Settings
from bot.urls import mask_url

log = logging.getLogger(__name__)

POLLING_TIMEOUT = 30  # seconds a getUpdates long poll waits; Telegram allows up to 50


class TelegramUnavailableError(FmbotError):
    """The Bot API could not be reached or refused to start the bot."""


class Runner:
    def __init__(self, app: TelegramApp, *, polling_timeout: int = POLLING_TIMEOUT) -> None:
        self.app = app
        self.polling_timeout = polling_timeout
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    # --- polling ---

    async def run_polling(self, *, handle_signals: bool = True) -> None:
        app = self.app
        with secrets_redacted(*app.secrets), self._signals(handle_signals):
            try:
                await self._start()
                # getUpdates answers 409 while a webhook is set.
                await app.bot.delete_webhook(drop_pending_updates=False)
                polling = asyncio.create_task(
                    app.dispatcher.start_polling(
                        app.bot,
                        polling_timeout=self.polling_timeout,
                        handle_signals=False,  # ours wait for replies in progress
                        close_bot_session=False,
                        allowed_updates=app.allowed_updates(),
                    )
                )
                stopping = asyncio.create_task(self._stop.wait())
                await asyncio.wait({polling, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                await self._stop_polling(polling)
                await app.inflight.drain(app.settings.shutdown_grace)
                await self._confirm_handled()
                polling.result()  # polling itself failed: report it
            finally:
                await app.bot.session.close()

    async def _stop_polling(self, polling: asyncio.Task[None]) -> None:
        if polling.done():
            return
        try:
            # Cancels the pending getUpdates; updates already fetched have their tasks.
            await self.app.dispatcher.stop_polling()
        except RuntimeError:  # not started yet
            polling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await polling

    async def _confirm_handled(self) -> None:
        """Confirm what we handled; anything newer stays queued for the next start."""
        last = self.app.inflight.last_update_id
        if last is None:
            return
        try:
            await self.app.bot(GetUpdates(offset=last + 1, limit=1, timeout=0))
        except TelegramAPIError as exc:
            log.warning("could not confirm handled updates (they may come again): %s", exc.message)

    # --- webhook ---

    async def run_webhook(
        self, url: str, host: str, port: int, *, handle_signals: bool = True
    ) -> None:
        app = self.app
        secret = app.settings.secret_token()
        with secrets_redacted(*app.secrets), self._signals(handle_signals):
            try:
                await self._start()
                web_app = web.Application()
                WebhookHandler(
                    dispatcher=app.dispatcher,
                    bot=app.bot,
                    secret_token=secret,  # requests without it get 401
                    handle_in_background=True,
                ).register(web_app, path=urlsplit(url).path or "/")
                setup_application(web_app, app.dispatcher, bot=app.bot)
                runner = web.AppRunner(web_app, access_log=None)
                await runner.setup()
                site = web.TCPSite(runner, host, port)
                try:
                    await site.start()
                    await app.bot.set_webhook(
                        url,
                        secret_token=secret,
                        allowed_updates=app.allowed_updates(),
                        drop_pending_updates=False,
                    )
                    log.info("webhook server listening on %s:%s", host, port)
                    await self._stop.wait()
                    # Stop accepting; Telegram keeps what arrives meanwhile for the next start.
                    await site.stop()
                    await app.inflight.drain(app.settings.shutdown_grace)
                finally:
                    await runner.cleanup()
            finally:
                await app.bot.session.close()

    # --- shared ---

    async def _start(self) -> None:
        await start_bot(self.app.bot, self.app.settings, self.app.secrets)

    def _signals(self, enabled: bool) -> contextlib.AbstractContextManager[None]:
        return stop_on_signals(self.request_stop, enabled)


async def start_bot(
    bot: Bot, settings: TelegramSettings, secrets: tuple[str, ...], *, menu: bool = True
) -> None:
    """Check the token (getMe) and, with ``menu``, publish the command menu."""
    try:
        me = await bot.me()
        if menu:
            await bot.set_my_commands(list(MENU))
    except TelegramUnauthorizedError:
        raise ConfigError(
            "TELEGRAM_BOT_TOKEN",
            "********",
            "Telegram rejected the token (401 Unauthorized); copy it again from @BotFather",
        ) from None
    except TelegramAPIError as exc:
        message = redact(exc.message, secrets)
        raise TelegramUnavailableError(
            f"cannot reach the Telegram Bot API at {settings.api_url}: {message}"
        ) from None
    except ClientDecodeError as exc:  # the page is not quoted: it may echo the token
        raise ConfigError(
            "TELEGRAM_API_URL", mask_url(settings.api_url), not_bot_api(exc)
        ) from None
    log.info("started as @%s", me.username)


def not_bot_api(exc: ClientDecodeError) -> str:
    answer = f"{exc.answer}, " if isinstance(exc, NotBotApiError) else ""
    return (
        f"it did not answer as a Telegram Bot API server ({answer}not Bot API JSON): "
        "check the URL, e.g. https://api.telegram.org"
    )


@contextlib.contextmanager
def stop_on_signals(request_stop: Callable[[], None], enabled: bool = True) -> Iterator[None]:
    """SIGTERM/SIGINT call ``request_stop``; a second signal gets the default: exit now."""
    if not enabled:
        yield
        return
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        log.warning("%s: finishing replies in progress, then exiting", sig.name)
        request_stop()
        for s in installed:
            loop.remove_signal_handler(s)
        installed.clear()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
    try:
        yield
    finally:
        for s in installed:
            loop.remove_signal_handler(s)


def parse_listen(value: str) -> tuple[str, int]:
    return urls.parse_listen(value, "--listen", "0.0.0.0:8080")


async def run_telegram(
    settings: Settings, tg: TelegramSettings, *, webhook: str | None, listen: str
) -> None:
    """``fmbot telegram``: build the manager, run until a signal, close everything."""
    from bot.app import build_manager
    from bot.models.registry import close_models

    host, port = parse_listen(listen)
    if webhook is not None and not webhook.startswith("https://"):
        raise ConfigError("--webhook", webhook, "Telegram only delivers to https:// URLs")
    async with metrics_served(settings.metrics_listen, "all"):
        manager = await build_manager(settings)
        try:
            runner = Runner(TelegramApp(manager, tg))
            if webhook is None:
                await runner.run_polling()
            else:
                await runner.run_webhook(webhook, host, port)
        finally:
            await manager.aclose()
            await close_models()

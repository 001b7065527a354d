"""Assembling the Telegram channel: the aiogram Bot and Dispatcher over a dialog manager."""

from __future__ import annotations

from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer

from adapters.telegram.access import AccessPolicy
from adapters.telegram.handlers import Handlers
from adapters.telegram.inflight import InFlight
from adapters.telegram.replies import Replies
from adapters.telegram.settings import TelegramSettings
from adapters.telegram.throttle import Throttle
from bot.dialog import DialogManager


def make_bot(settings: TelegramSettings) -> Bot:
    """A Bot talking to ``TELEGRAM_API_URL`` (Telegram, a self-hosted server, or a fake)."""
    session = AiohttpSession(api=TelegramAPIServer.from_base(settings.api_url))
    # No default parse_mode: replies carry explicit entities, previews are plain text.
    return Bot(settings.token, session=session, default=DefaultBotProperties())


class TelegramApp:
    """Everything one running bot needs; :mod:`adapters.telegram.runner` drives it."""

    def __init__(self, manager: DialogManager, settings: TelegramSettings) -> None:
        self.manager = manager
        self.settings = settings
        self.bot = make_bot(settings)
        self.replies = Replies(self.bot, manager, settings, Throttle())
        self.handlers = Handlers(manager, self.replies, AccessPolicy.from_settings(settings))
        self.inflight = InFlight()
        self.dispatcher = Dispatcher()
        self.dispatcher.update.outer_middleware(self.inflight)
        self.dispatcher.include_router(self.handlers.router())

    @property
    def secrets(self) -> tuple[str, str]:
        """What must never appear in logs or errors."""
        return self.settings.token, self.settings.secret_token()

    def allowed_updates(self) -> list[str]:
        return self.dispatcher.resolve_used_update_types()

"""Assembling the Telegram channel: the aiogram Bot and Dispatcher over a dialog manager."""

from __future__ import annotations

from http import HTTPStatus

from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import (
    BareFilesPathWrapper,
    FilesPathWrapper,
    SimpleFilesPathWrapper,
    TelegramAPIServer,
)
from aiogram.exceptions import ClientDecodeError
from aiogram.methods import Response, TelegramMethod
from aiogram.methods.base import TelegramType

from adapters.telegram.access import AccessPolicy
from adapters.telegram.albums import AlbumCollector
from adapters.telegram.handlers import Handlers
from adapters.telegram.inflight import InFlight
from adapters.telegram.metrics import RequestMetrics
from adapters.telegram.pictures import SCHEME, TelegramFiles
from adapters.telegram.replies import Replies
from adapters.telegram.settings import TelegramSettings
from adapters.telegram.spans import RequestSpans
from adapters.telegram.throttle import Throttle
from adapters.telegram.unknown import SkipUnknownUpdates
from bot.dialog import DialogManager


class NotBotApiError(ClientDecodeError):
    """An answer that is not Bot API JSON (a web page, a proxy's error): a wrong
    TELEGRAM_API_URL. aiogram's error does not keep the HTTP status that says so."""

    def __init__(self, status: int, cause: ClientDecodeError) -> None:
        super().__init__(cause.message, cause.original, cause.data)
        self.status = status

    @property
    def answer(self) -> str:
        """E.g. "HTTP 404 Not Found"."""
        try:
            return f"HTTP {self.status} {HTTPStatus(self.status).phrase}"
        except ValueError:  # a status HTTP does not define
            return f"HTTP {self.status}"


class Session(AiohttpSession):
    def check_response(
        self, bot: Bot, method: TelegramMethod[TelegramType], status_code: int, content: str
    ) -> Response[TelegramType]:
        try:
            return super().check_response(bot, method, status_code, content)
        except ClientDecodeError as exc:
            raise NotBotApiError(status_code, exc) from exc.original


def make_bot(settings: TelegramSettings) -> Bot:
    """A Bot talking to ``TELEGRAM_API_URL`` (Telegram, a self-hosted server, or a fake)."""
    wrapper: FilesPathWrapper = BareFilesPathWrapper()
    if settings.api_local_files is not None:
        wrapper = SimpleFilesPathWrapper(*settings.api_local_files)
    api = TelegramAPIServer.from_base(
        settings.api_url, is_local=settings.api_local, wrap_local_file=wrapper
    )
    session = Session(api=api)
    session.middleware(RequestMetrics())
    session.middleware(RequestSpans())
    # No default parse_mode: replies carry explicit entities, previews are plain text.
    return Bot(settings.token, session=session, default=DefaultBotProperties())


class TelegramApp:
    """Everything one running bot needs; :mod:`adapters.telegram.runner` drives it."""

    def __init__(self, manager: DialogManager, settings: TelegramSettings) -> None:
        self.manager = manager
        manager.channel = "telegram"
        self.settings = settings
        self.bot = make_bot(settings)
        # Whichever process runs a turn (this one, or a queue worker) fetches its pictures.
        manager.pictures.register(SCHEME, TelegramFiles(self.bot))
        self.replies = Replies(self.bot, manager, settings, Throttle())
        self.handlers = Handlers(manager, self.replies, AccessPolicy.from_settings(settings))
        self.inflight = InFlight()
        self.dispatcher = Dispatcher()
        self.dispatcher.update.outer_middleware(self.inflight)
        self.dispatcher.update.outer_middleware(SkipUnknownUpdates())
        self.albums = AlbumCollector()
        self.dispatcher.update.outer_middleware(self.albums)
        self.dispatcher.include_router(self.handlers.router())

    @property
    def secrets(self) -> tuple[str, str]:
        """What must never appear in logs or errors."""
        return self.settings.token, self.settings.secret_token()

    def allowed_updates(self) -> list[str]:
        return self.dispatcher.resolve_used_update_types()

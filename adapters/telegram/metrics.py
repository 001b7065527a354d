"""``fmbot_telegram_requests_total{method,outcome}`` and the 429 waits Telegram asked for: an
aiogram request middleware, so every Bot API call of the process is counted (replies, previews,
getUpdates, file downloads' getFile), whoever makes it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.methods import Response, TelegramMethod
from aiogram.methods.base import TelegramType

from bot.observe import metrics

if TYPE_CHECKING:
    from aiogram import Bot


def outcome_of(exc: Exception) -> str:
    """A failed Bot API call in a few words: 429, 5xx, network, 4xx (bad request, blocked,
    conflict, unauthorized) or error (anything else)."""
    if isinstance(exc, TelegramRetryAfter):
        return "429"
    if isinstance(exc, TelegramServerError):
        return "5xx"
    if isinstance(exc, TelegramNetworkError):
        return "network"
    if isinstance(exc, TelegramAPIError):
        return "4xx"
    return "error"


class RequestMetrics(BaseRequestMiddleware):
    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        if not metrics.enabled():
            return await make_request(bot, method)
        name = method.__api_method__  # sendMessage, editMessageText...: a fixed set
        try:
            response = await make_request(bot, method)
        except Exception as exc:  # not cancellation: a stopped poll is no failure
            metrics.count(metrics.TELEGRAM_REQUESTS, 1, name, outcome_of(exc))
            if isinstance(exc, TelegramRetryAfter):
                metrics.count(metrics.TELEGRAM_RETRY_AFTER, exc.retry_after, name)
            raise
        metrics.count(metrics.TELEGRAM_REQUESTS, 1, name, "ok")
        return response

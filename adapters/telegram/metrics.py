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
        except TelegramRetryAfter as exc:
            metrics.count(metrics.TELEGRAM_REQUESTS, 1, name, "429")
            metrics.count(metrics.TELEGRAM_RETRY_AFTER, exc.retry_after, name)
            raise
        except TelegramServerError:
            metrics.count(metrics.TELEGRAM_REQUESTS, 1, name, "5xx")
            raise
        except TelegramNetworkError:
            metrics.count(metrics.TELEGRAM_REQUESTS, 1, name, "network")
            raise
        except TelegramAPIError:  # 400 (bad request), 403 (blocked), 409, 401
            metrics.count(metrics.TELEGRAM_REQUESTS, 1, name, "4xx")
            raise
        except Exception:  # not cancellation: a stopped poll is no failure
            metrics.count(metrics.TELEGRAM_REQUESTS, 1, name, "error")
            raise
        metrics.count(metrics.TELEGRAM_REQUESTS, 1, name, "ok")
        return response

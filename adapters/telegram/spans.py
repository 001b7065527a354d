"""The Telegram channel's spans, when tracing is on (bot/observe/tracing.py).

* ``fmbot deliver``: a reply's final delivery (the formatted text sent, or the preview message
  edited into it, and the parts past 4,096 characters), a child of the turn's span; also the
  "(stopped)" delivery after a turn was stopped, and a stored reply sent again after a worker
  restart (under the job's process span).
* ``telegram METHOD`` (kind CLIENT): each Bot API call made inside a turn (previews: drafts, the
  preview message and its edits) or inside a delivery; calls outside (getUpdates, commands run
  outside a queue job) make none.

Attributes are low-cardinality: ``fmbot.channel``, ``fmbot.telegram.method``,
``fmbot.telegram.preview`` (how the reply was previewed: ``draft``, ``message`` or ``none``),
``fmbot.reply`` (``complete``, ``partial``, ``stopped``, ``redelivered``). A failure sets
``error.type`` to the outcome label of ``fmbot_telegram_requests_total`` (``429``, ``4xx``,
``5xx``, ``network``; ``fmbot.telegram.retry_after`` with a 429) and the span's status to error.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.exceptions import TelegramRetryAfter
from aiogram.methods import Response, TelegramMethod
from aiogram.methods.base import TelegramType

from adapters.telegram.metrics import outcome_of
from bot.observe import metrics, tracing

if TYPE_CHECKING:
    from aiogram import Bot

    from adapters.telegram.preview import ReplyPreview


def delivering(
    turn: metrics.TurnInfo | None, preview: ReplyPreview, reply: str
) -> contextlib.AbstractContextManager[Any]:
    """``with delivering(turn, preview, "complete"): await preview.finish(text)``."""
    if not tracing.enabled():  # the preview's attribute is worked out only when traced
        return contextlib.nullcontext()
    if preview.draft_id is not None:
        shown = "draft"
    else:
        shown = "message" if preview.message_id is not None else "none"
    turn_span = turn.span if turn is not None else None
    attributes = {"fmbot.telegram.preview": shown}
    return tracing.deliver(turn_span, "telegram", reply, attributes, kind_of=outcome_of)


class RequestSpans(BaseRequestMiddleware):
    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        parent = _parent() if tracing.enabled() else None
        if parent is None:
            return await make_request(bot, method)
        name = method.__api_method__  # sendMessage, editMessageText...: a fixed set
        attributes = {"fmbot.channel": "telegram", "fmbot.telegram.method": name}
        with tracing.child(
            f"telegram {name}", parent, attributes, client=True, kind_of=outcome_of
        ) as span:
            try:
                return await make_request(bot, method)
            except TelegramRetryAfter as exc:
                span.set_attribute("fmbot.telegram.retry_after", exc.retry_after)
                raise


def _parent() -> Any:
    """A delivery's span, else the running turn's, else the job's: None outside all of them."""
    turn = metrics.current_turn.get()
    turn_span = turn.span if turn is not None else None
    return tracing.current() or turn_span or tracing.ambient()

"""Updates of a type this aiogram does not know (a newer Bot API, a hand-made webhook request).

aiogram warns about such an update with the whole update in the text: user content in the log.
This outer middleware skips them before aiogram looks, logging only the update id and type.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from aiogram import BaseMiddleware
from aiogram.dispatcher.event.bases import UNHANDLED
from aiogram.types import TelegramObject, Update
from aiogram.types.update import UpdateTypeLookupError

from adapters.telegram.inflight import Handler

log = logging.getLogger(__name__)

# Update types are snake_case field names; anything else in a hand-made update is not shown.
_TYPE_NAME = re.compile(r"[a-z_]{1,64}")


def update_type(update: Update) -> str | None:
    """The update's type, or None when aiogram does not know it."""
    try:
        return update.event_type
    except UpdateTypeLookupError:
        return None


def field_names(update: Update) -> str:
    """What the update carries instead of a known type: its field names, never their values."""
    names = sorted({*update.model_fields_set, *(update.model_extra or {})} - {"update_id"})
    shown = [n if _TYPE_NAME.fullmatch(n) else "?" for n in names[:5]]
    return ", ".join(shown) + (", …" if len(names) > 5 else "") or "none"


class SkipUnknownUpdates(BaseMiddleware):
    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        if isinstance(event, Update) and update_type(event) is None:
            log.warning(
                "skipped update %s of a type this aiogram does not know (%s)",
                event.update_id,
                field_names(event),
            )
            return UNHANDLED
        return await handler(event, data)

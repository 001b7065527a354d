"""Model Markdown → Telegram text + entities (telegramify-markdown), split into messages.

Entities rather than parse_mode: nothing has to be escaped, and Telegram cannot misread a
half-finished tag. Should Telegram still reject a part's formatting, the sender resends that
part's text without entities (:attr:`Part.plain`).
"""

from __future__ import annotations

import logging

import telegramify_markdown
from aiogram.types import MessageEntity

from adapters.telegram.splitting import TEXT_LIMIT, Part, split

log = logging.getLogger(__name__)


def markdown_parts(markdown: str, limit: int = TEXT_LIMIT) -> list[Part]:
    """The reply as formatted messages of at most ``limit`` UTF-16 units each."""
    try:
        text, found = telegramify_markdown.convert(markdown)
        entities = [MessageEntity.model_validate(e.to_dict()) for e in found]
    except Exception as exc:  # a converter bug must not cost the user the reply
        log.warning("markdown conversion failed, sending plain text: %s", exc)
        return plain_parts(markdown, limit)
    if not text.strip():
        return plain_parts(markdown, limit)
    return split(text, entities, limit)


def plain_parts(text: str, limit: int = TEXT_LIMIT) -> list[Part]:
    return split(text, (), limit)

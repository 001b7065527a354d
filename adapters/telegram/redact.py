"""Keeping the bot token out of logs.

The token is part of every Bot API URL, and some aiohttp errors quote the URL (aiogram then
logs them, e.g. "Failed to fetch updates - TelegramNetworkError: ... url=.../bot<TOKEN>/...").
A filter on every logger that may carry such text masks the secrets in the message and in the
formatted traceback before any handler sees the record.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

MASK = "<redacted>"
# Filters apply where a record is created, not to records passing through from children,
# so each logger that may quote a URL gets its own.
LOGGER_PREFIXES = ("aiogram", "aiohttp", "asyncio", "adapters", "bot")


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message, self.secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        return True


def _loggers() -> list[logging.Logger]:
    names = [
        name for name in logging.root.manager.loggerDict if name.split(".", 1)[0] in LOGGER_PREFIXES
    ]
    known = {"aiogram.dispatcher", "aiogram.event", "aiogram.middlewares", "aiogram.webhook"}
    return [
        logging.root,
        *(logging.getLogger(n) for n in sorted({*names, *LOGGER_PREFIXES, *known})),
    ]


@contextmanager
def secrets_redacted(*secrets: str) -> Iterator[RedactSecrets]:
    """Mask ``secrets`` in every record of the relevant loggers while the block runs."""
    flt = RedactSecrets(secrets)
    loggers = _loggers()
    for logger in loggers:
        logger.addFilter(flt)
    try:
        yield flt
    finally:
        for logger in loggers:
            logger.removeFilter(flt)

"""Pictures people send in Telegram: which file of a message to read, and how to fetch it.

A message names its picture by source ``telegram:FILE_ID`` (:mod:`bot.pictures`); the dialog
manager fetches it when it runs the turn — in a queue worker too — through :class:`TelegramFiles`
(``getFile``, then the file URL of TELEGRAM_API_URL's server). History keeps the ``file_id``, so
any process with the bot's token can fetch the picture again for a follow-up question. Nothing
is downloaded here before the message is known to be for the bot, and nothing over the limit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiogram import Bot
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest
from aiogram.types import Message, PhotoSize

from bot.errors import PictureError
from bot.pictures import MAX_PICTURE_BYTES

log = logging.getLogger(__name__)

SCHEME = "telegram"
#: Images sent "as file" that a vision model can be given (a GIF: its first frame).
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif"})
#: The cloud Bot API's getFile limit; normalisation refuses larger files anyway.
LIMIT_MB = MAX_PICTURE_BYTES // 2**20
TOO_BIG = (
    f"This picture is larger than {LIMIT_MB} MB, the most a bot can download from Telegram. "
    "Please send a smaller one, or send it as a photo rather than as a file."
)
UNSUPPORTED_IMAGE = (
    "I can read JPEG, PNG, WebP and GIF pictures, and this file is {kind}. "
    "Please send it as a photo, or convert it to one of those."
)
NOT_DOWNLOADED = "I could not download the picture from Telegram, please send it again."
GONE = "Telegram no longer has this picture, please send it again."
DOWNLOAD_TIMEOUT = 60  # seconds for one file: 20 MB over a slow link


@dataclass(frozen=True, slots=True)
class Found:
    """What a message holds for the vision model: sources, or why it cannot be read."""

    sources: tuple[str, ...] = ()
    problem: str | None = None


def picture_of(message: Message) -> Found | None:
    """The picture of ``message`` (a photo or an image file); None when it has none."""
    if message.photo:
        size = largest(message.photo)
        if size is None:
            return Found(problem=TOO_BIG)
        return Found((f"{SCHEME}:{size.file_id}",))
    document = message.document
    if document is None or not (document.mime_type or "").startswith("image/"):
        return None
    if document.mime_type not in IMAGE_TYPES:
        return Found(problem=UNSUPPORTED_IMAGE.format(kind=document.mime_type))
    if (document.file_size or 0) > MAX_PICTURE_BYTES:
        return Found(problem=TOO_BIG)
    return Found((f"{SCHEME}:{document.file_id}",))


def pictures_of(messages: Sequence[Message]) -> Found | None:
    """The pictures of an album's messages, in order; the first problem wins (one reply)."""
    found = [f for f in map(picture_of, messages) if f is not None]
    if not found:
        return None
    problem = next((f.problem for f in found if f.problem is not None), None)
    if problem is not None:
        return Found(problem=problem)
    return Found(tuple(s for f in found for s in f.sources))


def largest(sizes: Sequence[PhotoSize]) -> PhotoSize | None:
    """The largest size a bot may download (file_size within the limit when Telegram says)."""
    within = [s for s in sizes if (s.file_size or 0) <= MAX_PICTURE_BYTES]
    return max(within, key=lambda s: s.width * s.height, default=None)


class TelegramFiles:
    """The ``telegram:`` fetcher: ``getFile``, then the file's bytes from the Bot API server.

    Errors become PictureError for the person chatting; the file URL (it holds the token) is
    never put into a message or a log line."""

    def __init__(self, bot: Bot) -> None:
        self.bot = bot

    async def __call__(self, file_id: str) -> bytes:
        try:
            file = await self.bot.get_file(file_id)
        except TelegramBadRequest as exc:
            if "too big" in exc.message:
                raise PictureError(TOO_BIG) from None
            log.warning("getFile refused a picture: %s", exc.message)
            raise PictureError(GONE) from None
        except TelegramAPIError as exc:
            log.warning("getFile failed: %s", type(exc).__name__)
            raise PictureError(NOT_DOWNLOADED) from None
        if (file.file_size or 0) > MAX_PICTURE_BYTES:  # a local server has no 20 MB limit
            raise PictureError(TOO_BIG)
        if not file.file_path:
            raise PictureError(GONE)
        if Path(file.file_path).is_absolute() and not self.bot.session.api.is_local:
            log.warning(
                "the Bot API server named a file on its own disk, as a --local server does: "
                "set TELEGRAM_API_LOCAL=true (and TELEGRAM_API_LOCAL_FILES if this bot sees "
                "the server's files at another path)"
            )
            raise PictureError(NOT_DOWNLOADED)
        try:
            # From a --local server, aiogram reads the file on disk (TELEGRAM_API_LOCAL_FILES
            # maps the server's path to ours); otherwise it downloads it over HTTP.
            downloaded = await self.bot.download_file(file.file_path, timeout=DOWNLOAD_TIMEOUT)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            # Only the type: aiohttp's messages quote the URL and a local server's paths, which
            # hold the token (ValueError: a path outside TELEGRAM_API_LOCAL_FILES' server dir).
            log.warning("a picture could not be downloaded from Telegram: %s", type(exc).__name__)
            raise PictureError(NOT_DOWNLOADED) from None
        assert downloaded is not None  # None only when given a destination path
        return downloaded.read()

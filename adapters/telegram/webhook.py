"""The webhook endpoint of ``--role all``: aiogram's handler, with a 400 for a bad body.

aiogram parses the body inside the request (a 500 and a traceback in the log) or in a background
task (an exception nobody retrieves). A body that is not an Update is the sender's mistake: it
gets 400 and one log line saying what was wrong, without quoting it (it may hold user content).
"""

from __future__ import annotations

import json
import logging

from aiogram import Bot
from aiogram.types import Update
from aiogram.webhook.aiohttp_server import SimpleRequestHandler
from aiohttp import web
from pydantic import ValidationError

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


def problem(exc: ValueError) -> str:
    """Why a body is not an Update, in words that quote none of it."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "top level"
        return f"not an Update: {first['type']} at {where}"
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON: {exc.msg} at character {exc.pos}"
    return f"unreadable body ({type(exc).__name__})"


async def body_problem(request: web.Request, bot: Bot) -> str | None:
    """None if the request's body is an Update; else what is wrong with it."""
    try:
        Update.model_validate(await request.json(loads=bot.session.json_loads))
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError and ValidationError
        return problem(exc)
    return None


class WebhookHandler(SimpleRequestHandler):
    async def handle(self, request: web.Request) -> web.Response:
        if self.verify_secret(request.headers.get(SECRET_HEADER, ""), self.bot):
            wrong = await body_problem(request, self.bot)
            if wrong is not None:
                log.warning("webhook: answered 400 to a request that is no update (%s)", wrong)
                return web.Response(status=400, text="not a Telegram update")
        # The body is read once: aiohttp keeps it for aiogram's second look.
        return await super().handle(request)

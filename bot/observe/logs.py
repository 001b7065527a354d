"""Log lines: ``FMBOT_LOG_FORMAT=text|json`` and ``FMBOT_LOG_LEVEL``, for fmbot's loggers, the
libraries' (aiogram, aiohttp, httpx, redis, asyncio) and Python warnings alike.

``json`` writes one object per line: ``ts``, ``level``, ``logger``, ``message``; inside a turn
also ``chat``, ``turn`` (the id stored with the turn's reply, meta ``turn``), ``channel`` and
``model``; an exception as ``exc_type`` and ``traceback`` fields, never as extra lines, uncaught
ones too (in the main thread, other threads, or "ignored" in ``__del__``). Both formats pass
every line through :class:`Scrubber` last: the process's secrets (keys, tokens, passwords from
its settings), passwords in URLs (``user:password@``, ``?password=``) and ``Authorization``
header values are masked, whoever logged them and at whatever level.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import threading
import types
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import unquote, unquote_plus, urlsplit

from pydantic import BaseModel, SecretStr

from bot.observe.metrics import current_turn
from bot.secret_names import SECRET_NAME
from bot.text import terminal_safe

FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
MASK = "****"

# user:password@ in any URL; the value of an Authorization header or an api-key style field,
# as libraries print them (``'authorization': 'Bearer …'``, ``Authorization: Api-Key …``).
# The scheme starts after a non-word character and is at most 32 characters long: tried at every
# letter, or unbounded, it would rescan the rest of a long word again and again (minutes for a
# long base64 line); this way each start scans a few characters.
_URL_PASSWORD = re.compile(r"(?<!\w)(\w[\w+.-]{0,31}://[^:/@\s'\"]*:)[^@\s'\"]+@")
_AUTH_VALUE = re.compile(
    r"((?:authorization|x-api-key|api[-_]key|x-telegram-bot-api-secret-token)['\"]?\s*[:=]\s*"
    r"['\"]?(?:(?:bearer|api-key|basic)\s+)?)[^\s'\",}]+",
    re.IGNORECASE,
)
# Any ``?name=value`` / ``&name=value``; the name is checked apart (SECRET_NAME: those
# bot.urls.mask_url hides too), which keeps this linear.
_QUERY_PARAM = re.compile(r"([?&]([^=&?#\s'\"]*)=)[^&#\s'\"]+")


class Scrubber:
    """Masks known secret values, URL passwords and Authorization values in a line."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first: a secret containing another is masked whole. Short values are not
        # secrets worth masking (and would mask ordinary words).
        self.secrets = tuple(sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        if "://" in text:
            text = _URL_PASSWORD.sub(rf"\1{MASK}@", text)
            text = _QUERY_PARAM.sub(_mask_secret_param, text)
        return _AUTH_VALUE.sub(rf"\1{MASK}", text)


def _mask_secret_param(match: re.Match[str]) -> str:
    return match[1] + MASK if SECRET_NAME.search(match[2]) else match[0]


def secret_values(*settings: BaseModel) -> list[str]:
    """Every SecretStr value of ``settings``, and the passwords of the URLs among them
    (``user:password@`` and secret query parameters), as written and decoded."""
    found: list[str] = []
    for model in settings:
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, SecretStr):
                found.append(value.get_secret_value())
            elif isinstance(value, str) and "://" in value:
                found += _url_secrets(value)
    return found


def _url_secrets(url: str) -> list[str]:
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return []
    found = [password, unquote(password)] if password else []
    for param in parts.query.split("&"):
        name, _, value = param.partition("=")
        if value and SECRET_NAME.search(name):
            found += [value, unquote_plus(value)]
    return found


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message``. Log lines quote users and models: shown, never obeyed by the
    terminal (``^[[2J``)."""

    def __init__(self, scrub: Scrubber | None = None) -> None:
        super().__init__(TEXT_FORMAT)
        self.scrub = scrub or Scrubber()

    def format(self, record: logging.LogRecord) -> str:
        return terminal_safe(self.scrub(super().format(record)))


class JsonFormatter(logging.Formatter):
    def __init__(self, scrub: Scrubber | None = None) -> None:
        super().__init__()
        self.scrub = scrub or Scrubber()

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, Any] = {
            "ts": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": self.scrub(record.getMessage()),
        }
        turn = current_turn.get()
        if turn is not None:
            line |= {"chat": turn.chat, "turn": turn.id, "channel": turn.channel}
            if turn.model:
                line["model"] = turn.model
        if record.exc_info and record.exc_info[0] is not None:
            line["exc_type"] = record.exc_info[0].__name__
            line["traceback"] = self.scrub(record.exc_text or self.formatException(record.exc_info))
        elif record.exc_text:
            line["traceback"] = self.scrub(record.exc_text)
        if record.stack_info:
            line["stack"] = self.scrub(self.formatStack(record.stack_info))
        return json.dumps(line, ensure_ascii=False, default=str)


_format = "text"


def current_format() -> str:
    return _format


def formatter(fmt: str, secrets: Iterable[str] = ()) -> logging.Formatter:
    scrub = Scrubber(secrets)
    return JsonFormatter(scrub) if fmt == "json" else TextFormatter(scrub)


def log_to(handler: logging.Handler, fmt: str = "text", secrets: Iterable[str] = ()) -> None:
    """Make ``handler`` the root logger's only one, in format ``fmt``."""
    handler.setFormatter(formatter(fmt, secrets))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is when a line is written, not as it was when logging
    was configured: a command run in-process (a test's CliRunner) swaps stderr for a buffer it
    closes afterwards, and a handler holding that buffer would fail every later line."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _: TextIO) -> None:
        pass  # set by StreamHandler.__init__ and setStream: stderr is looked up each time


def configure(
    fmt: str | None,
    level: str | None,
    *,
    default_level: str = "WARNING",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Log to ``stream`` (stderr) in ``fmt`` at ``level``; values that are not valid fall back
    to text and ``default_level`` (settings validation reports them)."""
    global _format
    _format = fmt if fmt in FORMATS else "text"
    upper = (level or "").strip().upper()
    logging.getLogger().setLevel(upper if upper in LEVELS else default_level)
    log_to(logging.StreamHandler(stream) if stream else _Stderr(), _format, secrets)
    logging.captureWarnings(True)  # warnings.warn: the py.warnings logger, same formatter
    # Python prints uncaught exceptions itself, unscrubbed and, in json, as many lines: they go
    # through the same formatter as every other line.
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_thread
    sys.unraisablehook = _log_unraisable


def _log_uncaught(
    kind: type[BaseException], exc: BaseException, tb: types.TracebackType | None
) -> None:
    logging.getLogger("fmbot").critical("uncaught exception", exc_info=(kind, exc, tb))


def _log_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return  # as Python's own hook: a thread's normal way out
    where = args.thread.name if args.thread is not None else "a thread"
    logging.getLogger("fmbot").error(
        "uncaught exception in thread %s",
        where,
        exc_info=_exc_info(args.exc_type, args.exc_value, args.exc_traceback),
    )


def _log_unraisable(args: sys.UnraisableHookArgs) -> None:
    """An exception Python cannot raise (in ``__del__``, a finalizer, a closed generator)."""
    what = args.err_msg or "Exception ignored in"
    if args.object is not None:
        with contextlib.suppress(Exception):  # the object's own __repr__ may fail
            what = f"{what}: {args.object!r}"
    logging.getLogger("fmbot").error(
        "%s", what, exc_info=_exc_info(args.exc_type, args.exc_value, args.exc_traceback)
    )


def _exc_info(
    kind: type[BaseException], exc: BaseException | None, tb: types.TracebackType | None
) -> tuple[type[BaseException], BaseException, types.TracebackType | None]:
    # The hooks' arguments allow exc_value=None; logging wants an exception object.
    return kind, exc if exc is not None else kind.__new__(kind), tb

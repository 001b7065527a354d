"""What the OpenAI-compatible chat fakes share: FakeOpenAI's ``/v1/chat/completions`` and
FakeYandex's AI Studio surface of the same name.

- :func:`parse_messages` validates ``messages`` the way OpenAI does: ``content`` is a string or a
  list of parts ``{"type": "text", "text"}`` / ``{"type": "image_url", "image_url": {"url",
  "detail"}}``; pictures must be base64 ``data:`` URLs (the fakes cannot download anything) of
  JPEG, PNG, GIF or WebP, and are decoded with Pillow. Errors carry OpenAI's messages, ``param``
  and ``code`` (as seen in public reports of real responses).
- :func:`echo_reply` is the "model": ``Echo: <last user text>``, prefixed with what arrived when
  pictures came (``I see 1 picture: 1568x1176 JPEG.``) so end-to-end tests can check it in the
  reply the user sees.
- :func:`chat` answers a checked request; :func:`answer` sends the completion as one JSON body or
  as Server-Sent Events, carrying out the stream faults (``cut``, ``content_filter``,
  ``error_event``) of :mod:`tests.fakes.base`.
- :func:`openai_error_body` is OpenAI's error object, for HTTP errors and errors inside a stream.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from PIL import Image, UnidentifiedImageError

from tests.fakes.base import FakeServer, words

ROLES = frozenset({"system", "user", "assistant", "developer", "tool"})
PART_TYPES = ("text", "image_url", "input_audio", "refusal", "audio", "file")
DETAILS = ("auto", "low", "high")
IMAGE_MIME = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF", "image/webp": "WEBP"}
#: OpenAI: "Please make sure your image is below 20 MB in size".
MAX_IMAGE_BYTES = 20 * 1024 * 1024
NOT_VISION = "Invalid content type. image_url is only supported by certain models."
DATA_URL_EXPECTED = (
    "Expected a base64-encoded data URL with an image MIME type "
    "(e.g. 'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but got"
)
#: OpenAI's ``error.type`` and default ``error.code`` by status (its API reference and error codes
#: guide); other statuses are ``server_error`` with no code.
ERROR_TYPES: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
#: Codes of an account out of credit or over a limit: OpenAI answers them with 429 and the type
#: ``insufficient_quota`` (help.openai.com, "Troubleshooting API usage and spend limits").
QUOTA_CODES = frozenset(
    {
        "insufficient_quota",
        "credit_balance_exhausted",
        "organization_spend_limit_exceeded",
        "project_spend_limit_exceeded",
        "organization_usage_limit_exceeded",
    }
)
UNSUPPORTED_IMAGE = (
    "You uploaded an unsupported image. Please make sure your image is below 20 MB in size and is "
    "of one the following formats: ['png', 'jpeg', 'gif', 'webp']."
)


def openai_error_body(
    status: int,
    message: str,
    *,
    code: str | int | None = None,
    param: str | None = None,
    error_type: str | None = None,
) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` as OpenAI sends it."""
    kind, default_code = ERROR_TYPES.get(status, ("server_error", None))
    if code in QUOTA_CODES:
        kind = "insufficient_quota"
    error = {
        "message": message,
        "type": error_type or kind,
        "param": param,
        "code": default_code if code is None else code,
    }
    return {"error": error}


class ChatError(Exception):
    """A request the service refuses; each fake renders it in its own error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        #: Sent as is instead of the service's own error shape (another server's error).
        self.body = body


@dataclass(frozen=True)
class ReceivedImage:
    """A picture as it arrived in an ``image_url`` part, decoded by Pillow."""

    model: str
    message: int  # index in ``messages``
    part: int  # index in that message's ``content``
    mime: str  # what the data URL declared
    format: str  # what Pillow found: JPEG, PNG, GIF, WEBP
    width: int
    height: int
    mode: str  # Pillow's mode: RGB, RGBA, L, P...
    detail: str | None
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def open(self) -> Image.Image:
        """The decoded picture, to compare pixels with what was sent."""
        image = Image.open(io.BytesIO(self.data))
        image.load()
        return image

    def describe(self) -> str:
        return f"{self.width}x{self.height} {self.format}"


@dataclass
class Message:
    role: str
    text: str  # the text parts, joined by newlines
    images: list[ReceivedImage]


def sse(data: Any) -> bytes:
    """One Server-Sent Event carrying ``data`` as JSON."""
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def _type_name(value: Any) -> str:
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if value is None:
        return "null"
    return "an object"


def _invalid_type(param: str, expected: str, value: Any) -> ChatError:
    return ChatError(
        400,
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)} instead.",
        param=param,
        code="invalid_type",
    )


def _missing(param: str) -> ChatError:
    return ChatError(
        400,
        f"Missing required parameter: '{param}'.",
        param=param,
        code="missing_required_parameter",
    )


def _invalid_value(param: str, value: Any, supported: tuple[str, ...]) -> ChatError:
    names = [f"'{s}'" for s in supported]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + f", and {names[-1]}"
    return ChatError(
        400,
        f"Invalid value: '{value}'. Supported values are: {listed}.",
        param=param,
        code="invalid_value",
    )


def parse_messages(body: dict[str, Any], *, model: str, vision: bool) -> list[Message]:
    """The request's messages, checked; pictures decoded (raises :class:`ChatError`)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ChatError(400, "'messages' must contain at least one message", param="messages")
    return [_parse_message(m, i, model=model, vision=vision) for i, m in enumerate(messages)]


def _parse_message(m: Any, i: int, *, model: str, vision: bool) -> Message:
    if not isinstance(m, dict):
        raise _invalid_type(f"messages[{i}]", "an object", m)
    role = m.get("role")
    if role not in ROLES:
        raise _invalid_value(f"messages[{i}].role", role, tuple(sorted(ROLES)))
    content = m.get("content")
    if isinstance(content, str):
        return Message(role, content, [])
    if not isinstance(content, list):
        raise _invalid_type(
            f"messages[{i}].content", "one of a string or array of objects", content
        )
    texts: list[str] = []
    images: list[ReceivedImage] = []
    for j, part in enumerate(content):
        param = f"messages[{i}].content[{j}]"
        if not isinstance(part, dict):
            raise _invalid_type(param, "an object", part)
        kind = part.get("type")
        if kind is None:
            raise _missing(f"{param}.type")
        if kind not in PART_TYPES:
            raise _invalid_value(f"{param}.type", kind, PART_TYPES)
        if kind == "text":
            text = part.get("text")
            if text is None:
                raise _missing(f"{param}.text")
            if not isinstance(text, str):
                raise _invalid_type(f"{param}.text", "a string", text)
            texts.append(text)
            continue
        if kind != "image_url" or role != "user":
            # Only user messages may carry pictures; audio and files are out of the fakes' scope.
            raise _invalid_value(f"{param}.type", kind, ("text",))
        if not vision:
            # OpenAI's real answer for a text-only model (note its odd "messages.[0]" path).
            raise ChatError(400, NOT_VISION, param=f"messages.[{i}].content.[{j}].type")
        images.append(_parse_image(part, param, i, j, model))
    return Message(role, "\n".join(texts), images)


def _parse_image(part: dict[str, Any], param: str, i: int, j: int, model: str) -> ReceivedImage:
    spec = part.get("image_url")
    if spec is None:
        raise _missing(f"{param}.image_url")
    if not isinstance(spec, dict):
        raise _invalid_type(f"{param}.image_url", "an object", spec)
    url = spec.get("url")
    if url is None:
        raise _missing(f"{param}.image_url.url")
    if not isinstance(url, str):
        raise _invalid_type(f"{param}.image_url.url", "a string", url)
    detail = spec.get("detail")
    if detail is not None and detail not in DETAILS:
        raise _invalid_value(f"{param}.image_url.detail", detail, DETAILS)
    url_param = f"{param}.image_url.url"
    if url.startswith(("http://", "https://")):
        # The real service would fetch it; the fakes never reach the internet, so it fails the
        # way an unreachable URL does there.
        raise ChatError(400, f"Error while downloading {url}.", code="invalid_image_url")

    def bad_url(problem: str) -> ChatError:
        return ChatError(
            400,
            f"Invalid image URL: '{url_param}'. {DATA_URL_EXPECTED} {problem}.",
            param=url_param,
            code="invalid_value",
        )

    if not url.startswith("data:"):
        raise bad_url("a value without the 'data:' prefix")
    header, comma, payload = url[len("data:") :].partition(",")
    mime, _, encoding = header.partition(";")
    if not comma or encoding != "base64":
        raise bad_url("a value without a base64 payload")
    if mime not in IMAGE_MIME:
        raise bad_url(f"unsupported MIME type '{mime}'")
    if not payload:
        raise bad_url("empty base64-encoded bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ChatError(400, "Invalid base64 image_url.", param=url_param) from None
    if len(data) > MAX_IMAGE_BYTES:
        raise ChatError(400, UNSUPPORTED_IMAGE, code="invalid_image_format")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # a truncated file fails here, not at open()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError):
        raise ChatError(400, UNSUPPORTED_IMAGE, code="invalid_image_format") from None
    if image.format not in IMAGE_MIME.values():
        raise ChatError(400, UNSUPPORTED_IMAGE, code="invalid_image_format")
    return ReceivedImage(
        model=model,
        message=i,
        part=j,
        mime=mime,
        format=str(image.format),
        width=image.width,
        height=image.height,
        mode=image.mode,
        detail=detail,
        data=data,
    )


def openai_image_tokens(image: ReceivedImage) -> int:
    """OpenAI's published cost for GPT-4o: 85 tokens at low detail; otherwise the picture is fit
    in 2048x2048, its short side scaled down to 768, and each 512 px tile costs 170 more."""
    if image.detail == "low":
        return 85
    w, h = float(image.width), float(image.height)
    if max(w, h) > 2048:
        w, h = w * 2048 / max(w, h), h * 2048 / max(w, h)
    if min(w, h) > 768:
        w, h = w * 768 / min(w, h), h * 768 / min(w, h)
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


def echo_reply(messages: list[Message]) -> str:
    """The fake model's answer: what it saw, then an echo of the last user message."""
    user = [m.text for m in messages if m.role == "user"]
    echo = f"Echo: {user[-1] if user else ''}"
    images = [image for m in messages for image in m.images]
    if not images:
        return echo
    plural = "picture" if len(images) == 1 else "pictures"
    seen = ", ".join(image.describe() for image in images)
    return f"I see {len(images)} {plural}: {seen}. {echo}"


def prompt_tokens(messages: list[Message], image_cost: Callable[[ReceivedImage], int]) -> int:
    """Four tokens of framing per message, a token per word, and the pictures' cost."""
    return sum(
        4 + len(words(m.text)) + sum(image_cost(image) for image in m.images) for m in messages
    )


@dataclass
class Completion:
    """One answer to send: the words of the reply and how it ended."""

    model: str
    reply: list[str]
    finish: str  # "stop" or "length"
    prompt_tokens: int

    @property
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": len(self.reply),
            "total_tokens": self.prompt_tokens + len(self.reply),
        }


#: Whose refusal of a prompt longer than the window a fake sends: OpenAI's (vLLM's is the same
#: text), llama-server's (``request (N tokens) exceeds the available context size (M tokens)``,
#: type ``exceed_context_size_error`` with ``n_prompt_tokens`` and ``n_ctx``), or that of
#: llama-server builds whose message gave no numbers.
ContextError = Literal["openai", "llama-server", "llama-server-old"]


def check_context(
    body: dict[str, Any], tokens: int, window: int, style: ContextError = "openai"
) -> None:
    """Refuse a prompt of ``tokens`` longer than ``window`` as ``style`` does: OpenAI counts the
    reply's ``max_tokens`` in, with its error's text, ``param`` and ``code`` as in public reports
    of real ones; llama-server refuses a prompt that leaves no room to decode (``>=``)."""
    if style != "openai":
        if tokens < window:
            return
        error: dict[str, Any] = {"code": 400, "type": "exceed_context_size_error"}
        if style == "llama-server":
            error["message"] = (
                f"request ({tokens} tokens) exceeds the available context size ({window} "
                "tokens), try increasing it"
            )
            error |= {"n_prompt_tokens": tokens, "n_ctx": window}
        else:
            error["message"] = "the request exceeds the available context size, try increasing it"
        raise ChatError(400, error["message"], body={"error": error})
    limit = body.get("max_tokens") or body.get("max_completion_tokens")
    if tokens > window:
        raise ChatError(
            400,
            f"This model's maximum context length is {window} tokens. However, your messages "
            f"resulted in {tokens} tokens. Please reduce the length of the messages.",
            param="messages",
            code="context_length_exceeded",
        )
    if limit is not None and tokens + int(limit) > window:
        raise ChatError(
            400,
            f"This model's maximum context length is {window} tokens. However, you requested "
            f"{tokens + int(limit)} tokens ({tokens} in the messages, {int(limit)} in the "
            "completion). Please reduce the length of the messages or completion.",
            param="messages",
            code="context_length_exceeded",
        )


def complete(body: dict[str, Any], reply: str, tokens: int) -> Completion:
    """Check the sampling options and cut the reply at ``max_tokens``."""
    temperature = body.get("temperature")
    if temperature is not None and not 0 <= float(temperature) <= 2:
        raise ChatError(400, "temperature must be between 0 and 2", param="temperature")
    limit = body.get("max_tokens")
    reply_words, finish = words(reply), "stop"
    if limit is not None and len(reply_words) > int(limit):
        reply_words, finish = reply_words[: int(limit)], "length"
    return Completion(str(body["model"]), reply_words, finish, tokens)


async def chat(
    server: FakeServer,
    request: web.Request,
    body: dict[str, Any],
    *,
    vision: bool,
    reply: str | None,
    image_cost: Callable[[ReceivedImage], int],
    received: list[ReceivedImage],
    ignore_stream: bool = False,
    context_window: int | None = None,
    context_error: ContextError = "openai",
) -> web.StreamResponse:
    """Answer a chat request whose credentials and model the fake has checked: ``reply`` (or the
    echo), the pictures appended to ``received`` once the whole request is valid; a prompt
    longer than ``context_window`` (tokens by the fake's count) is refused."""
    messages = parse_messages(body, model=str(body["model"]), vision=vision)
    tokens = prompt_tokens(messages, image_cost)
    if context_window is not None:
        check_context(body, tokens, context_window, context_error)
    text = reply if reply is not None else echo_reply(messages)
    completion = complete(body, text, tokens)
    received += [image for m in messages for image in m.images]
    return await answer(server, request, body, completion, ignore_stream=ignore_stream)


async def answer(
    server: FakeServer,
    request: web.Request,
    body: dict[str, Any],
    completion: Completion,
    *,
    ignore_stream: bool = False,
) -> web.StreamResponse:
    """Send ``completion`` as a ``chat.completion`` or, when asked, as a stream of chunks."""
    base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": completion.model}
    if not body.get("stream") or ignore_stream:
        message = {"role": "assistant", "content": " ".join(completion.reply)}
        choice = {"index": 0, "message": message, "finish_reason": completion.finish}
        return web.json_response(
            base | {"object": "chat.completion", "choices": [choice], "usage": completion.usage}
        )
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return chunk([{"index": 0, "delta": delta, "finish_reason": finish}])

    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
        piece = base | {"object": "chat.completion.chunk", "choices": choices}
        if include_usage:
            piece["usage"] = usage  # null on every chunk but the last, as OpenAI sends it
        return sse(piece)

    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    fault = server.fault_of(request)
    pieces = [event({"role": "assistant", "content": ""})]
    pieces += [event({"content": w if i == 0 else " " + w}) for i, w in enumerate(completion.reply)]
    for i, piece in enumerate(pieces):
        if fault is not None and i > fault.after:
            if fault.kind == "cut":
                await server.cut(request, response, fault)
                return response
            if fault.kind == "content_filter":
                await server.write_line(request, response, event({}, "content_filter"))
                await server.write_line(request, response, b"data: [DONE]\n\n")
                await response.write_eof()
                return response
            if fault.kind == "error_event":  # a failure after the 200: the stream ends with it
                error = openai_error_body(
                    fault.status, fault.message, code=fault.code, error_type=fault.error_type
                )
                await server.write_line(request, response, sse(error))
                await response.write_eof()
                return response
        if not await server.write_line(request, response, piece):
            return response
    tail = [event({}, completion.finish)]
    if include_usage:
        tail.append(chunk([], completion.usage))
    tail.append(b": keep-alive comment, ignored by clients\n\n")
    tail.append(b"data: [DONE]\n\n")
    for piece in tail:
        if not await server.write_line(request, response, piece):
            return response
    await response.write_eof()
    return response

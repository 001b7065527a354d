"""Backends for servers that speak the OpenAI HTTP API: OpenAI itself, and local ones
(llama.cpp ``llama-server``, Ollama, vLLM, LM Studio) that copy it.

Chat uses ``POST {base}/chat/completions`` with ``stream: true``: the body is Server-Sent Events,
``data: {chunk}`` lines ending with ``data: [DONE]``; ``stream_options.include_usage`` adds a last
chunk with token usage and no choices. Images use ``POST {base}/images/generations`` with
``response_format: b64_json``; embeddings ``POST {base}/embeddings``.

Authentication is ``Authorization: Bearer OPENAI_API_KEY``; without a key no header is sent, which
is what local servers expect.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from bot.errors import ContentFilterError, ModelError, StreamInterruptedError
from bot.events import Message, Usage
from bot.models.base import Chunk, GeneratedImage, GenerationOptions, ImageModel, TextModel
from bot.models.http import (
    REQUEST_ID_HEADER,
    RequestKind,
    RetryPolicy,
    Service,
    Timeouts,
    create_client,
    error_body_from_json,
    error_from_event,
    json_request,
    new_request_id,
    send,
    send_json,
    stream_error,
)

log = logging.getLogger(__name__)

#: Estimate for :meth:`OpenAITextModel.count_tokens`; see there.
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
TOKENS_REPLY_PRIMER = 3


class OpenAIConnection:
    """Base URL, optional key and an HTTP client, shared by the OpenAI-compatible backends."""

    def __init__(
        self,
        base_url: str = "https://api.openai.com/v1",
        api_key: SecretStr | None = None,
        *,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        service: Service | None = None,
    ) -> None:
        """``headers`` go with every request; ``service`` replaces the error messages (a
        provider with its own settings, like Yandex's OpenAI-compatible surface)."""
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key if api_key and api_key.get_secret_value() else None
        self._retry = retry or RetryPolicy()
        self._http = create_client(timeouts=timeouts)
        self._headers = dict(headers or {})
        if service is not None:
            self.service = service
            return
        host = urlsplit(self.base_url).netloc or self.base_url
        name = "OpenAI" if host == "api.openai.com" else f"the OpenAI-compatible server at {host}"
        title = name[0].upper() + name[1:]  # for the start of a sentence
        self.service = Service(
            name=name,
            auth_message=(
                f"{title} rejected the API key: check OPENAI_API_KEY."
                if self._api_key
                else f"{title} wants an API key: set OPENAI_API_KEY."
            ),
            permission_message=(
                f"{title} denied access (403): the key in OPENAI_API_KEY "
                "has no access to this model or project, or the API is not offered where the "
                "bot runs (OpenAI answers 403 to unsupported countries)."
            ),
            model_message=(
                f"{title} does not know this model (404): check the name in "
                "FMBOT_TEXT_MODEL / FMBOT_IMAGE_MODEL (openai:MODEL) and OPENAI_BASE_URL."
            ),
            quota_message=(
                "Check the billing, credit balance and spend limits of the OpenAI organization "
                "and project the key in OPENAI_API_KEY belongs to."
                if name == "OpenAI"
                else f"Check the billing and spend limits of the account on {host} that the "
                "key in OPENAI_API_KEY belongs to."
            ),
            secrets=(self._api_key,) if self._api_key else (),
        )

    def headers(self) -> dict[str, str]:
        headers = {**self._headers, REQUEST_ID_HEADER: new_request_id()}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        return headers

    def request(self, path: str, body: Any) -> httpx.Request:
        return json_request(
            self._http, "POST", f"{self.base_url}{path}", headers=self.headers(), body=body
        )

    async def post(self, path: str, body: Any, *, kind: RequestKind = "read") -> Any:
        return await send_json(
            self._http, self.request(path, body), self.service, policy=self._retry, kind=kind
        )

    async def open_stream(self, path: str, body: Any) -> httpx.Response:
        """POST a generation and return its response unread (the caller must ``aclose()`` it)."""
        return await send(
            self._http,
            self.request(path, body),
            self.service,
            policy=self._retry,
            stream=True,
            kind="generate",
        )

    def unreadable(self, what: str = "a reply") -> ModelError:
        return ModelError(f"{self.service.title} sent {what} fmbot cannot read.")

    async def aclose(self) -> None:
        await self._http.aclose()


class OpenAITextModel(TextModel):
    """Chat completions, streamed. ``context_window`` is configuration: the API does not say."""

    def __init__(
        self,
        connection: OpenAIConnection,
        model: str,
        *,
        name: str | None = None,
        context_window: int = 8192,
        owns_connection: bool = False,
    ) -> None:
        self.name = name or f"openai:{model}"
        self.model = model
        self._connection = connection
        self._context_window = context_window
        self._owns_connection = owns_connection

    @property
    def context_window(self) -> int:
        return self._context_window

    async def generate(
        self, messages: Sequence[Message], options: GenerationOptions
    ) -> AsyncIterator[Chunk]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [_message(m) for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if options.temperature is not None:
            body["temperature"] = options.temperature
        if options.max_tokens is not None:
            # ``max_tokens`` rather than the newer ``max_completion_tokens``: every compatible
            # server understands it, and OpenAI still accepts it for chat models.
            body["max_tokens"] = options.max_tokens
        service = self._connection.service
        response = await self._connection.open_stream("/chat/completions", body)
        if response.headers.get("content-type", "").startswith("application/json"):
            # A server that ignored ``stream: true`` and answered in one piece.
            async for piece in self._whole_reply(response):
                yield piece
            return
        sent: list[str] = []
        usage: Usage | None = None
        finished = False  # a finish_reason arrived
        try:
            async for data in _sse_data(response):
                if data.strip() == "[DONE]":
                    finished = True
                    break
                chunk = _loads(data, self._connection)
                if "error" in chunk:  # OpenAI and others report failures inside the stream
                    error = error_from_event(service, error_body_from_json(chunk))
                    if sent and not isinstance(error, ContentFilterError):
                        raise StreamInterruptedError(
                            f"{error} The reply was cut off.", partial="".join(sent)
                        )
                    raise error
                usage = _usage(chunk.get("usage")) or usage
                for choice in chunk.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        sent.append(content)
                        yield content
                    reason = choice.get("finish_reason")
                    if reason == "content_filter":
                        raise ContentFilterError(
                            f"{service.title}'s content filter stopped this reply. "
                            "Please rephrase your message."
                        )
                    if reason:
                        finished = True
        except httpx.HTTPError as exc:
            log.error(
                "stream from %s cut (request id %s): %s",
                self.model,
                response.request.headers.get(REQUEST_ID_HEADER, "-"),
                type(exc).__name__,
            )
            raise stream_error(exc, service, "".join(sent)) from exc
        except (AttributeError, TypeError) as exc:  # a chunk of an unexpected shape
            raise self._connection.unreadable("a stream") from exc
        finally:
            # Runs on early close too: dropping the connection stops generation server-side.
            await response.aclose()
        if not finished:
            raise StreamInterruptedError(
                f"The reply from {service.name} stopped before it was complete; what arrived is "
                "shown. Please ask again to get the full answer.",
                partial="".join(sent),
            )
        if usage:
            yield usage

    async def _whole_reply(self, response: httpx.Response) -> AsyncIterator[Chunk]:
        try:
            await response.aread()
            choice = response.json()["choices"][0]
            text = str(choice["message"].get("content") or "")
            usage = _usage(response.json().get("usage"))
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise self._connection.unreadable() from exc
        finally:
            await response.aclose()
        if choice.get("finish_reason") == "content_filter":
            raise ContentFilterError(
                f"{self._connection.service.title}'s content filter stopped this reply. "
                "Please rephrase your message."
            )
        if text:
            yield text
        if usage:
            yield usage

    async def count_tokens(self, messages: Sequence[Message]) -> int:
        """An *estimate*: the OpenAI API has no tokenizer endpoint.

        Each message costs ``ceil(len(text) / 4)`` tokens (about 4 characters per token for
        English with OpenAI's tokenizers; other languages and code use more, so this tends to
        undercount them), plus 4 tokens of chat-format overhead per message and 3 to prime the
        reply. Good enough to trim history; rely on the server's ``usage`` for exact numbers.
        """
        return TOKENS_REPLY_PRIMER + sum(
            TOKENS_PER_MESSAGE + math.ceil(len(m.text) / CHARS_PER_TOKEN) for m in messages
        )

    async def aclose(self) -> None:
        if self._owns_connection:
            await self._connection.aclose()


class OpenAIImageModel(ImageModel):
    """``POST /images/generations`` with base64 output (``dall-e-3``, ``dall-e-2`` and the like)."""

    def __init__(
        self,
        connection: OpenAIConnection,
        model: str,
        *,
        name: str | None = None,
        size: str = "1024x1024",
        owns_connection: bool = False,
    ) -> None:
        self.name = name or f"openai:{model}"
        self.model = model
        self.size = size
        self._connection = connection
        self._owns_connection = owns_connection

    async def generate_image(self, prompt: str) -> GeneratedImage:
        if not prompt.strip():
            raise ModelError("Describe the picture you want: the description is empty.")
        answer = await self._connection.post(
            "/images/generations",
            {
                "model": self.model,
                "prompt": prompt,
                "n": 1,
                "size": self.size,
                "response_format": "b64_json",
            },
            kind="generate",
        )
        try:
            data = base64.b64decode(answer["data"][0]["b64_json"], validate=True)
        except (KeyError, IndexError, TypeError, binascii.Error, ValueError) as exc:
            raise self._connection.unreadable("a picture") from exc
        return GeneratedImage(data=data, mime_type=_sniff_image_type(data))

    async def aclose(self) -> None:
        if self._owns_connection:
            await self._connection.aclose()


async def embed(
    connection: OpenAIConnection, texts: Sequence[str], *, model: str = "text-embedding-3-small"
) -> list[list[float]]:
    """Embeddings of ``texts``, in order (``POST /embeddings``)."""
    answer = await connection.post("/embeddings", {"model": model, "input": list(texts)})
    try:
        items = sorted(answer["data"], key=lambda item: int(item["index"]))
        vectors = [[float(x) for x in item["embedding"]] for item in items]
    except (KeyError, TypeError, ValueError) as exc:
        raise connection.unreadable("embeddings") from exc
    if len(vectors) != len(texts):
        raise connection.unreadable("the wrong number of embeddings")
    return vectors


def _message(message: Message) -> dict[str, Any]:
    """A chat message; one with pictures as content parts, each a base64 ``data:`` URL (the
    server needs no access to where the picture came from)."""
    if not message.pictures:
        return {"role": message.role, "content": message.text}
    parts: list[dict[str, Any]] = [{"type": "text", "text": message.text}]
    for picture in message.pictures:
        encoded = base64.b64encode(picture.data).decode("ascii")
        url = f"data:{picture.mime_type};base64,{encoded}"
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return {"role": message.role, "content": parts}


async def _sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The ``data`` of each Server-Sent Event (multi-line data joined with newlines)."""
    lines: list[str] = []
    async for line in response.aiter_lines():
        if not line:  # a blank line ends the event
            if lines:
                yield "\n".join(lines)
                lines = []
            continue
        if line.startswith(":"):  # comment / keep-alive
            continue
        field, _, value = line.partition(":")
        if field == "data":
            lines.append(value.removeprefix(" "))
    if lines:  # a last event without its blank line
        yield "\n".join(lines)


def _loads(data: str, connection: OpenAIConnection) -> Mapping[str, Any]:
    try:
        value = json.loads(data)
    except json.JSONDecodeError as exc:
        raise connection.unreadable("a stream") from exc
    if not isinstance(value, Mapping):
        raise connection.unreadable("a stream")
    return value


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, Mapping):
        return None
    try:
        return Usage(
            input_tokens=int(raw.get("prompt_tokens") or 0),
            output_tokens=int(raw.get("completion_tokens") or 0),
        )
    except (TypeError, ValueError):
        return None


def _sniff_image_type(data: bytes) -> str:
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/png"  # the API's default format

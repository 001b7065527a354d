"""YandexGPT (and other ``gpt://`` models) as a :class:`~bot.models.base.TextModel`.

Three ways to get a reply, chosen by ``mode``:

``stream`` (default)
    ``completion`` with ``stream: true``. The body is newline-separated JSON objects, each with
    the *whole* text so far; we turn them into deltas. A body that ends before a final status is a
    cut stream (:class:`~bot.errors.StreamInterruptedError` carrying the partial text).
``sync``
    ``completion`` with ``stream: false``: one JSON answer.
``async``
    ``completionAsync`` returns an operation that we poll until done. Half the price, slower.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import httpx

from bot.errors import ContentFilterError, ModelError, StreamInterruptedError
from bot.events import Message, Usage
from bot.model_spec import YANDEX_MODES, YandexMode
from bot.models.base import Chunk, GenerationOptions, TextModel
from bot.models.http import REQUEST_ID_HEADER, stream_error
from bot.models.yandex.client import YandexClient, grpc_error

log = logging.getLogger(__name__)

# The modes are part of the spec (``?mode=``): bot.model_spec checks them.
Mode = YandexMode
MODES = YANDEX_MODES

COMPLETION = "/foundationModels/v1/completion"
COMPLETION_ASYNC = "/foundationModels/v1/completionAsync"
TOKENIZE_COMPLETION = "/foundationModels/v1/tokenizeCompletion"

_DONE = {
    "ALTERNATIVE_STATUS_FINAL",
    "ALTERNATIVE_STATUS_TRUNCATED_FINAL",  # hit maxTokens: complete as far as we asked
    "ALTERNATIVE_STATUS_TOOL_CALLS",  # we send no tools, but it is a final status
}
_FILTERED = "ALTERNATIVE_STATUS_CONTENT_FILTER"


@dataclass(frozen=True, slots=True)
class _Completion:
    text: str
    status: str
    usage: Usage | None


class YandexTextModel(TextModel):
    """A Yandex Cloud text model. Does not own ``client`` unless ``owns_client``."""

    def __init__(
        self,
        client: YandexClient,
        model_uri: str,
        *,
        name: str | None = None,
        mode: Mode = "stream",
        context_window: int = 32768,
        operation_timeout: float = 600.0,
        owns_client: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.name = name or f"yandex:{model_uri}"
        self.model_uri = model_uri
        self.mode: Mode = mode
        self._client = client
        self._context_window = context_window
        self._operation_timeout = operation_timeout
        self._owns_client = owns_client

    @property
    def context_window(self) -> int:
        return self._context_window

    def _body(
        self, messages: Sequence[Message], options: GenerationOptions, *, stream: bool
    ) -> dict[str, Any]:
        completion: dict[str, Any] = {"stream": stream}
        if options.temperature is not None:
            # YandexGPT takes 0..1; fmbot's options allow up to 2 for other backends.
            completion["temperature"] = min(options.temperature, 1.0)
        if options.max_tokens is not None:
            completion["maxTokens"] = str(options.max_tokens)  # int64 travels as a string
        return {
            "modelUri": self.model_uri,
            "completionOptions": completion,
            "messages": [{"role": m.role, "text": m.text} for m in messages],
        }

    async def generate(
        self, messages: Sequence[Message], options: GenerationOptions
    ) -> AsyncIterator[Chunk]:
        if self.mode == "stream":
            # aclosing: when our caller closes us, close the inner generator (and its HTTP
            # stream) now, not whenever it is garbage-collected.
            async with aclosing(self._stream(self._body(messages, options, stream=True))) as chunks:
                async for chunk in chunks:
                    yield chunk
            return
        body = self._body(messages, options, stream=False)
        if self.mode == "sync":
            answer = await self._client.post(COMPLETION, body, kind="generate")
            result = _unwrap(answer, self._client)
        else:
            operation = await self._client.post(COMPLETION_ASYNC, body, kind="submit")
            result = await self._client.wait_operation(
                operation, give_up_after=self._operation_timeout, what="The reply"
            )
        completion = self._parse(result)
        _check_status(completion.status)
        if completion.text:
            yield completion.text
        if completion.usage:
            yield completion.usage

    async def _stream(self, body: Mapping[str, Any]) -> AsyncGenerator[Chunk, None]:
        service = self._client.service
        response = await self._client.open_stream(COMPLETION, body)
        sent = ""
        usage: Usage | None = None
        finished = False
        try:
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                completion = self._parse(_unwrap(_loads(line, service.title), self._client, sent))
                usage = completion.usage or usage
                _check_status(completion.status)
                # Each line repeats the whole text so far; send only what is new.
                if completion.text.startswith(sent):
                    delta = completion.text[len(sent) :]
                else:  # the service never rewrites, but do not repeat text if it does
                    log.warning("stream text is not an extension of what was sent; skipping")
                    delta = ""
                if delta:
                    sent += delta
                    yield delta
                if completion.status in _DONE:
                    finished = True
                    break
        except httpx.HTTPError as exc:
            log.error(
                "stream from %s cut (request id %s): %s",
                self.model_uri,
                response.request.headers.get(REQUEST_ID_HEADER, "-"),
                type(exc).__name__,
            )
            raise stream_error(exc, service, sent) from exc
        finally:
            # Also runs when the caller closes us early: closing the response drops the
            # connection, which tells the service to stop generating.
            await response.aclose()
        if not finished:
            raise StreamInterruptedError(
                f"The reply from {service.name} stopped before it was complete; what arrived is "
                "shown. Please ask again to get the full answer.",
                partial=sent,
            )
        if usage:
            yield usage

    def _parse(self, result: Any) -> _Completion:
        try:
            alternative = result["alternatives"][0]
            text = str(alternative.get("message", {}).get("text", ""))
            status = str(alternative.get("status", ""))
            raw = result.get("usage")
            usage = (
                Usage(
                    input_tokens=int(raw.get("inputTextTokens", 0)),
                    output_tokens=int(raw.get("completionTokens", 0)),
                )
                if isinstance(raw, Mapping)
                else None
            )
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError(
                f"{self._client.service.title} sent a reply fmbot cannot read."
            ) from exc
        return _Completion(text=text, status=status, usage=usage)

    async def count_tokens(self, messages: Sequence[Message]) -> int:
        """Tokens as the model's tokenizer counts them (``tokenizeCompletion``, one request)."""
        body = self._body(messages, GenerationOptions(), stream=False)
        answer = _unwrap(await self._client.post(TOKENIZE_COMPLETION, body), self._client)
        tokens = answer.get("tokens")
        if not isinstance(tokens, list):
            raise ModelError(f"{self._client.service.title} sent a token count fmbot cannot read.")
        return len(tokens)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


def _check_status(status: str) -> None:
    if status == _FILTERED:
        raise ContentFilterError(
            "Yandex Cloud's content filter stopped this reply. Please rephrase your message."
        )


def _loads(line: str, service: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{service} sent a stream fmbot cannot read.") from exc


def _unwrap(answer: Any, client: YandexClient, partial: str = "") -> Mapping[str, Any]:
    """``{"result": {...}}`` -> the inside; an ``{"error": ...}`` object -> its ModelError."""
    if not isinstance(answer, Mapping):
        raise ModelError(f"{client.service.title} sent a reply fmbot cannot read.")
    error = answer.get("error")
    if isinstance(error, Mapping):
        code = int(error.get("grpcCode", error.get("code", 2)) or 2)
        mapped = grpc_error(code, str(error.get("message") or ""), client.service)
        if partial and not isinstance(mapped, ContentFilterError):
            raise StreamInterruptedError(f"{mapped} The reply was cut off.", partial=partial)
        raise mapped
    result = answer.get("result", answer)
    if not isinstance(result, Mapping):
        raise ModelError(f"{client.service.title} sent a reply fmbot cannot read.")
    return result

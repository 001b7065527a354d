"""A fake OpenAI-compatible server (``/v1/chat/completions``, ``/v1/images/generations``,
``/v1/embeddings``), written from the public API reference.

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``. Streaming is
Server-Sent Events: ``data: {chunk}`` events, a finish chunk, a usage chunk with empty ``choices``
when ``stream_options.include_usage`` is set, then ``data: [DONE]``. With ``api_key=None`` the
server needs no key, like llama.cpp's server or Ollama. The "model" echoes the last user message.

Messages may carry pictures (``image_url`` parts with base64 ``data:`` URLs) for the models in
``vision_models``; other models refuse them with OpenAI's error. Each picture is decoded and kept
in :attr:`FakeOpenAI.received_images`, and the reply starts with what arrived (``I see 1 picture:
1568x1176 JPEG.``); see :mod:`tests.fakes.chat_completions`.

With ``context_window`` set, a prompt longer than it (by the fake's count: a token a word, 4 a
message) is refused as OpenAI does ("This model's maximum context length is N tokens. However,
your messages resulted in M tokens."), or as llama-server does (``context_error``).
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeServer, Fault, words
from tests.fakes.chat_completions import (
    ChatError,
    ContextError,
    ReceivedImage,
    chat,
    openai_error_body,
    openai_image_tokens,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EMBEDDING_DIM = 8


BodyHandler = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]


class BadRequest(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def openai_error(
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    code: str | int | None = None,
    param: str | None = None,
    error_type: str | None = None,
) -> web.Response:
    """An error in OpenAI's shape (FakeYandex answers its OpenAI-compatible surface so too)."""
    body = openai_error_body(status, message, code=code, param=param, error_type=error_type)
    return web.json_response(body, status=status, headers=headers)


def fake_image(prompt: str) -> bytes:
    return PNG_MAGIC + hashlib.sha256(prompt.encode()).digest()


def fake_embedding(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [(digest[i] - 128) / 128 for i in range(EMBEDDING_DIM)]


@dataclass
class FakeOpenAI(FakeServer):
    api_key: str | None = "sk-test-0123456789abcdefXYZW"
    models: set[str] = field(
        default_factory=lambda: {"gpt-test", "vision-test", "dall-e-test", "embed-test"}
    )
    #: Models that accept ``image_url`` parts; the others answer OpenAI's "only supported by
    #: certain models" error.
    vision_models: set[str] = field(default_factory=lambda: {"vision-test"})
    #: Every picture of every chat request that was answered, in arrival order.
    received_images: list[ReceivedImage] = field(default_factory=list)
    #: Overrides the echo reply when set.
    reply: str | None = None
    base_url: str = ""  # http://127.0.0.1:PORT/v1
    #: Answer in one JSON piece even when asked to stream, as some servers do.
    ignore_stream: bool = False
    #: Tokens (the fake's count: a word each, 4 a message) a prompt plus ``max_tokens`` may
    #: take; a longer one is refused with OpenAI's "maximum context length" error. None: any.
    context_window: int | None = None
    #: Whose error refuses such a prompt (see :data:`tests.fakes.chat_completions.ContextError`).
    context_error: ContextError = "openai"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/images/generations", self._images)
        app.router.add_post("/v1/embeddings", self._embeddings)
        self.base_url = await self.serve(app) + "/v1"

    def error_response(
        self,
        request: web.Request,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> web.Response:
        return openai_error(status, message, headers, code=code, param=param)

    def fault_response(
        self, request: web.Request, fault: Fault, headers: dict[str, str]
    ) -> web.Response:
        return openai_error(
            fault.status, fault.message, headers, code=fault.code, error_type=fault.error_type
        )

    def _check(self, request: web.Request) -> dict[str, Any]:
        if self.api_key is not None:
            auth = request.headers.get("Authorization", "")
            scheme, _, key = auth.partition(" ")
            if not auth:
                raise BadRequest(
                    401,
                    "You didn't provide an API key. You need to provide your API key in an "
                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                )
            if scheme != "Bearer" or key != self.api_key:
                # Like the real service: a masked echo of the key that was sent.
                masked = f"{key[:3]}{'*' * max(0, len(key) - 7)}{key[-4:]}"
                raise BadRequest(
                    401,
                    f"Incorrect API key provided: {masked}. You can find your API key at "
                    "https://platform.openai.com/account/api-keys.",
                    "invalid_api_key",
                )
        body = self.body_of(request)
        if not isinstance(body, dict):
            raise BadRequest(400, "We could not parse the JSON body of your request.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest(400, "you must provide a model parameter")
        if model not in self.models:
            raise BadRequest(
                404, f"The model `{model}` does not exist or you do not have access to it."
            )
        return body

    async def _guarded(self, request: web.Request, handler: BodyHandler) -> web.StreamResponse:
        try:
            return await handler(request, self._check(request))
        except BadRequest as exc:
            return self.error_response(request, exc.status, exc.message, code=exc.code)
        except ChatError as exc:
            if exc.body is not None:
                return web.json_response(exc.body, status=exc.status)
            return self.error_response(
                request, exc.status, exc.message, code=exc.code, param=exc.param
            )
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            return self.error_response(request, 400, f"Invalid request: {exc}")

    # --- chat ---

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, self._do_chat)

    async def _do_chat(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await chat(
            self,
            request,
            body,
            vision=body["model"] in self.vision_models,
            reply=self.reply,
            image_cost=openai_image_tokens,
            received=self.received_images,
            ignore_stream=self.ignore_stream,
            context_window=self.context_window,
            context_error=self.context_error,
        )

    # --- images, embeddings ---

    async def _images(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, self._do_images)

    async def _do_images(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise BadRequest(400, "'prompt' is required")
        if body.get("response_format", "url") not in {"url", "b64_json"}:
            raise BadRequest(400, "response_format must be url or b64_json")
        if body.get("response_format") != "b64_json":
            data = [{"url": "https://example.invalid/image.png"}]
        else:
            data = [
                {
                    "b64_json": base64.b64encode(fake_image(prompt)).decode(),
                    "revised_prompt": prompt,
                }
            ]
        return web.json_response({"created": int(time.time()), "data": data})

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, self._do_embeddings)

    async def _do_embeddings(
        self, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise BadRequest(400, "'input' must be a string or a list of strings")
        # Reverse order on purpose: clients must sort by ``index``, not trust the list order.
        data = [
            {"object": "embedding", "index": i, "embedding": fake_embedding(t)}
            for i, t in reversed(list(enumerate(texts)))
        ]
        tokens = sum(len(words(t)) for t in texts)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

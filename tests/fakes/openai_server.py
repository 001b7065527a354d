"""A fake OpenAI-compatible server (``/v1/chat/completions``, ``/v1/images/generations``,
``/v1/embeddings``), written from the public API reference.

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``. Streaming is
Server-Sent Events: ``data: {chunk}`` events, a finish chunk, a usage chunk with empty ``choices``
when ``stream_options.include_usage`` is set, then ``data: [DONE]``. With ``api_key=None`` the
server needs no key, like llama.cpp's server or Ollama. The "model" echoes the last user message.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeServer, words

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EMBEDDING_DIM = 8
ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("insufficient_quota", "insufficient_quota"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


BodyHandler = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]


class BadRequest(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def fake_image(prompt: str) -> bytes:
    return PNG_MAGIC + hashlib.sha256(prompt.encode()).digest()


def fake_embedding(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [(digest[i] - 128) / 128 for i in range(EMBEDDING_DIM)]


@dataclass
class FakeOpenAI(FakeServer):
    api_key: str | None = "sk-test-0123456789abcdefXYZW"
    models: set[str] = field(default_factory=lambda: {"gpt-test", "dall-e-test", "embed-test"})
    #: Overrides the echo reply when set.
    reply: str | None = None
    base_url: str = ""  # http://127.0.0.1:PORT/v1
    #: Answer in one JSON piece even when asked to stream, as some servers do.
    ignore_stream: bool = False

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
    ) -> web.Response:
        kind, default_code = ERROR_TYPES.get(status, ("server_error", None))
        body = {
            "error": {"message": message, "type": kind, "param": None, "code": code or default_code}
        }
        return web.json_response(body, status=status, headers=headers)

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
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            return self.error_response(request, 400, f"Invalid request: {exc}")

    # --- chat ---

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, self._do_chat)

    async def _do_chat(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest(400, "'messages' must contain at least one message")
        for m in messages:
            if m.get("role") not in {"system", "user", "assistant", "developer", "tool"}:
                raise BadRequest(400, f"Invalid role {m.get('role')!r}")
            if not isinstance(m.get("content"), str):
                raise BadRequest(400, "'content' must be a string")
        temperature = body.get("temperature")
        if temperature is not None and not 0 <= float(temperature) <= 2:
            raise BadRequest(400, "temperature must be between 0 and 2")
        limit = body.get("max_tokens")
        user = [m["content"] for m in messages if m["role"] == "user"]
        reply = words(self.reply if self.reply is not None else f"Echo: {user[-1] if user else ''}")
        finish = "stop"
        if limit is not None and len(reply) > int(limit):
            reply, finish = reply[: int(limit)], "length"
        prompt_tokens = sum(4 + len(words(m["content"])) for m in messages)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(reply),
            "total_tokens": prompt_tokens + len(reply),
        }
        created = int(time.time())
        base = {"id": "chatcmpl-fake", "created": created, "model": body["model"]}
        fault = self.fault_of(request)
        if not body.get("stream") or self.ignore_stream:
            return web.json_response(
                base
                | {
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": " ".join(reply)},
                            "finish_reason": finish,
                        }
                    ],
                    "usage": usage,
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def event(choices: list[dict[str, Any]], chunk_usage: Any = None) -> bytes:
            chunk = base | {"object": "chat.completion.chunk", "choices": choices}
            if include_usage:
                chunk["usage"] = chunk_usage
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        pieces = [
            event(
                [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
            )
        ]
        pieces += [
            event(
                [
                    {
                        "index": 0,
                        "delta": {"content": w if i == 0 else " " + w},
                        "finish_reason": None,
                    }
                ]
            )
            for i, w in enumerate(reply)
        ]
        for i, piece in enumerate(pieces):
            if fault is not None and i > fault.after:
                if fault.kind == "cut":
                    await self.cut(request, response, fault)
                    return response
                if fault.kind == "content_filter":
                    piece = event([{"index": 0, "delta": {}, "finish_reason": "content_filter"}])
                    await self.write_line(request, response, piece)
                    await self.write_line(request, response, b"data: [DONE]\n\n")
                    await response.write_eof()
                    return response
            if not await self.write_line(request, response, piece):
                return response
        tail = [event([{"index": 0, "delta": {}, "finish_reason": finish}])]
        if include_usage:
            tail.append(event([], usage))
        tail.append(b": keep-alive comment, ignored by clients\n\n")
        tail.append(b"data: [DONE]\n\n")
        for piece in tail:
            if not await self.write_line(request, response, piece):
                return response
        await response.write_eof()
        return response

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

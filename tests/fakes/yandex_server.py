"""A fake Yandex Cloud Foundation Models service, written from the public REST reference.

Two hosts like the real service: ``llm_url`` (models; errors as
``{"error": {"grpcCode", "httpCode", "message", "httpStatus", "details"}}``) and ``operations_url``
(``GET /operations/{id}``, ``POST /operations/{id}:cancel``; errors as ``{"code", "message",
"details"}``). Requests are validated like the service does: credentials, folder, model URI,
required fields, value ranges. The "model" echoes the last user message: ``Echo: <text>``.

The llm host also serves AI Studio's OpenAI-compatible ``POST /v1/chat/completions`` (model
``gpt://<folder>/<name>/<version>``; ``Authorization: Bearer <API key or IAM token>`` or
``Api-Key <API key>``; an optional ``OpenAI-Project: <folder>``), whose answers and errors are in
OpenAI's shape. Its multimodal models (``vision_models``) take ``image_url`` parts with base64
``data:`` URLs; they are decoded and kept in :attr:`FakeYandex.received_images`, sharing
:mod:`tests.fakes.chat_completions` with FakeOpenAI.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeServer, Fault, words
from tests.fakes.chat_completions import ChatError, ReceivedImage, chat
from tests.fakes.openai_server import openai_error

HOST = web.AppKey("host", str)  # which of the two hosts an app is
HTTP_TO_GRPC = {400: 3, 401: 16, 403: 7, 404: 5, 429: 8, 500: 13, 503: 14, 504: 4}
TEXT_MODELS = {"yandexgpt-lite", "yandexgpt", "llama-lite", "llama"}
#: Model Gallery models served only through the OpenAI-compatible API (AI Studio's model list).
GALLERY_MODELS = {"qwen3-235b-a22b-fp8", "gpt-oss-120b", "gpt-oss-20b"}
VISION_MODELS = {"gemma-3-27b-it", "qwen2.5-vl-32b-instruct"}
#: AI Studio documents Gemma 3 27B's cost as 256 context tokens per picture.
IMAGE_TOKENS = 256
ROLES = {"system", "user", "assistant"}
EMBEDDING_DIM = 256
JPEG_MAGIC = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"


BodyHandler = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def completion_tokens(messages: list[dict[str, Any]]) -> int:
    """The fake tokenizer for a whole request: one special token per message plus its words."""
    return sum(1 + len(words(str(m.get("text", "")))) for m in messages)


def reply_for(messages: list[dict[str, Any]]) -> str:
    user = [m for m in messages if m.get("role") == "user"]
    return f"Echo: {user[-1]['text'] if user else ''}"


def fake_image(prompt: str, seed: str | None) -> bytes:
    return JPEG_MAGIC + hashlib.sha256(f"{prompt}|{seed}".encode()).digest()


def fake_embedding(text: str, uri: str) -> list[float]:
    digest = hashlib.sha256(f"{uri}|{text}".encode()).digest()
    return [(digest[i % 32] - 128) / 128 for i in range(EMBEDDING_DIM)]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Operation:
    id: str
    description: str
    polls_left: int
    response: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    cancelled: bool = False
    created_at: str = field(default_factory=_now)

    def to_json(self) -> dict[str, Any]:
        done = self.polls_left <= 0 or self.cancelled
        op: dict[str, Any] = {
            "id": self.id,
            "description": self.description,
            "createdAt": self.created_at,
            "createdBy": "ajefakeserviceaccount",
            "modifiedAt": _now(),
            "done": done,
            "metadata": None,
        }
        if self.cancelled:
            op["error"] = {"code": 1, "message": "Operation cancelled", "details": []}
        elif done and self.error is not None:
            op["error"] = self.error
        elif done:
            op["response"] = self.response
        return op


@dataclass
class FakeYandex(FakeServer):
    api_key: str = "AQVNtest-api-key-0123456789"
    iam_token: str = "t1.test-iam-token.ABCDEF"
    folder_id: str = "b1gtestfolder"
    #: GET polls an operation needs before it is done.
    operation_polls: int = 2
    #: Overrides the echo reply when set.
    reply: str | None = None
    llm_url: str = ""
    operations_url: str = ""
    operations: dict[str, _Operation] = field(default_factory=dict)
    #: Models of ``/v1/chat/completions`` that accept pictures.
    vision_models: set[str] = field(default_factory=lambda: set(VISION_MODELS))
    #: Every picture of every ``/v1/chat/completions`` request that was answered, in order.
    received_images: list[ReceivedImage] = field(default_factory=list)

    async def start(self) -> None:
        llm = web.Application()
        llm[HOST] = "llm"
        v1 = "/foundationModels/v1"
        llm.router.add_post(f"{v1}/completion", self._completion)
        llm.router.add_post(f"{v1}/completionAsync", self._completion_async)
        llm.router.add_post(f"{v1}/imageGenerationAsync", self._image_async)
        llm.router.add_post(f"{v1}/tokenize", self._tokenize)
        llm.router.add_post(f"{v1}/tokenizeCompletion", self._tokenize_completion)
        llm.router.add_post(f"{v1}/textEmbedding", self._embedding)
        llm.router.add_post(f"{v1}/fewShotTextClassification", self._classify)
        llm.router.add_post("/v1/chat/completions", self._chat_completions)
        ops = web.Application()
        ops[HOST] = "operations"
        ops.router.add_get("/operations/{op_id}", self._get_operation)
        ops.router.add_post("/operations/{op_id}", self._cancel_operation)  # {id}:cancel
        self.llm_url = await self.serve(llm)
        self.operations_url = await self.serve(ops)

    # --- errors, in each host's format ---

    def error_response(
        self,
        request: web.Request,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        if request.path.startswith("/v1/"):
            return openai_error(status, message, headers)  # the OpenAI-compatible surface
        grpc = HTTP_TO_GRPC.get(status, 2)
        reason = web.Response(status=status).reason
        if request.app[HOST] == "llm":
            body: dict[str, Any] = {
                "error": {
                    "grpcCode": grpc,
                    "httpCode": status,
                    "message": message,
                    "httpStatus": reason,
                    "details": [],
                }
            }
        else:
            body = {"code": grpc, "message": message, "details": []}
        return web.json_response(body, status=status, headers=headers)

    def fault_response(
        self, request: web.Request, fault: Fault, headers: dict[str, str]
    ) -> web.Response:
        if request.path.startswith("/v1/"):  # OpenAI's codes and types on that surface only
            code, kind = fault.code, fault.error_type
            return openai_error(fault.status, fault.message, headers, code=code, error_type=kind)
        return self.error_response(request, fault.status, fault.message, headers)

    def _check(self, request: web.Request) -> dict[str, Any]:
        """Validate credentials and folder; return the JSON body (may raise BadRequest)."""
        auth = request.headers.get("Authorization", "")
        scheme, _, secret = auth.partition(" ")
        if not auth:
            raise BadRequest(401, "The request is missing the Authorization header")
        # The OpenAI-compatible surface documents "Bearer <API key>" (what OpenAI's SDKs send).
        bearer = (
            {self.iam_token, self.api_key} if request.path.startswith("/v1/") else {self.iam_token}
        )
        if not (
            (scheme == "Api-Key" and secret == self.api_key)
            or (scheme == "Bearer" and secret in bearer)
        ):
            # The real service names the credential it did not recognise; so do we, which lets
            # tests check that fmbot never passes such text on.
            raise BadRequest(401, f"Unknown api key '{secret}'")
        for header in ("x-folder-id", "OpenAI-Project"):
            folder = request.headers.get(header)
            if folder is not None and folder != self.folder_id:
                raise BadRequest(403, f"Permission to [resource-manager.folder {folder}] denied")
        body = self.body_of(request)
        if request.method == "POST" and request.app[HOST] == "llm" and not isinstance(body, dict):
            raise BadRequest(400, "Request body must be a JSON object")
        return body if isinstance(body, dict) else {}

    def _model(self, body: dict[str, Any], scheme: str, known: set[str] | None = None) -> str:
        uri = body.get("modelUri")
        if not isinstance(uri, str) or not uri:
            raise BadRequest(400, "modelUri is required")
        return self._model_uri(uri, scheme, known)

    def _model_uri(self, uri: str, scheme: str, known: set[str] | None) -> str:
        prefix = f"{scheme}://"
        if not uri.startswith(prefix):
            raise BadRequest(400, f"Invalid model URI {uri}: expected {prefix}<folder>/<model>")
        folder, _, rest = uri[len(prefix) :].partition("/")
        if folder != self.folder_id:
            raise BadRequest(403, f"Permission to [resource-manager.folder {folder}] denied")
        model = rest.split("/")[0]
        if known is not None and model not in known:
            raise BadRequest(404, f"Model {uri} not found")
        return uri

    def _model_name(self, uri: str) -> str:
        return uri.split("://", 1)[1].split("/")[1]

    def _messages(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest(400, "messages: at least one message is required")
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise BadRequest(400, f"messages: invalid role in {m!r}")
            if not isinstance(m.get("text"), str):
                raise BadRequest(400, "messages: text is required")
        return messages

    def _options(self, body: dict[str, Any]) -> tuple[bool, int | None]:
        options = body.get("completionOptions") or {}
        if not isinstance(options, dict):
            raise BadRequest(400, "completionOptions must be an object")
        temperature = options.get("temperature")
        if temperature is not None and not (0 <= float(temperature) <= 1):
            raise BadRequest(400, "completionOptions.temperature must be between 0 and 1")
        max_tokens = options.get("maxTokens")
        limit = None
        if max_tokens is not None:
            try:
                limit = int(max_tokens)  # int64: a string or a number
            except (TypeError, ValueError):
                raise BadRequest(400, "completionOptions.maxTokens must be an integer") from None
            if limit <= 0:
                raise BadRequest(400, "completionOptions.maxTokens must be positive")
        return bool(options.get("stream", False)), limit

    async def _guard(self, request: web.Request, handler: BodyHandler) -> web.StreamResponse:
        try:
            body = self._check(request)
            return await handler(request, body)
        except BadRequest as exc:
            return self.error_response(request, exc.status, exc.message)
        except ChatError as exc:  # only from /v1/chat/completions: OpenAI's shape
            return openai_error(exc.status, exc.message, code=exc.code, param=exc.param)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:  # malformed fields
            return self.error_response(request, 400, f"Request validation error: {exc}")

    # --- text ---

    def _result(
        self, messages: list[dict[str, Any]], text: str, status: str, total_words: int
    ) -> dict[str, Any]:
        return {
            "alternatives": [{"message": {"role": "assistant", "text": text}, "status": status}],
            "usage": {
                "inputTextTokens": str(completion_tokens(messages)),
                "completionTokens": str(len(words(text))),
                "totalTokens": str(completion_tokens(messages) + len(words(text))),
            },
            "modelVersion": "23.10.2024",
        }

    def _reply_words(
        self, messages: list[dict[str, Any]], limit: int | None
    ) -> tuple[list[str], str]:
        reply = words(self.reply if self.reply is not None else reply_for(messages))
        if limit is not None and len(reply) > limit:
            return reply[:limit], "ALTERNATIVE_STATUS_TRUNCATED_FINAL"
        return reply, "ALTERNATIVE_STATUS_FINAL"

    async def _completion(self, request: web.Request) -> web.StreamResponse:
        return await self._guard(request, self._do_completion)

    async def _do_completion(
        self, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        self._model(body, "gpt", TEXT_MODELS)
        messages = self._messages(body)
        stream, limit = self._options(body)
        reply, final_status = self._reply_words(messages, limit)
        fault = self.fault_of(request)
        if not stream:
            if fault is not None and fault.kind == "content_filter":
                result = self._result(messages, "", "ALTERNATIVE_STATUS_CONTENT_FILTER", 0)
            else:
                result = self._result(messages, " ".join(reply), final_status, len(reply))
            return web.json_response({"result": result})
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for i in range(1, len(reply) + 1):
            if fault is not None and i > fault.after:
                if fault.kind == "cut":
                    await self.cut(request, response, fault)
                    return response
                if fault.kind == "content_filter":
                    status = "ALTERNATIVE_STATUS_CONTENT_FILTER"
                    line = {"result": self._result(messages, "", status, 0)}
                    await self.write_line(request, response, json.dumps(line).encode() + b"\n")
                    await response.write_eof()
                    return response
            status = final_status if i == len(reply) else "ALTERNATIVE_STATUS_PARTIAL"
            line = {"result": self._result(messages, " ".join(reply[:i]), status, i)}
            if not await self.write_line(request, response, json.dumps(line).encode() + b"\n"):
                return response
        await response.write_eof()
        return response

    async def _completion_async(self, request: web.Request) -> web.StreamResponse:
        return await self._guard(request, self._do_completion_async)

    async def _do_completion_async(
        self, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        self._model(body, "gpt", TEXT_MODELS)
        messages = self._messages(body)
        _, limit = self._options(body)
        reply, status = self._reply_words(messages, limit)
        result = self._result(messages, " ".join(reply), status, len(reply))
        result["@type"] = (
            "type.googleapis.com/yandex.cloud.ai.foundation_models.v1.CompletionResponse"
        )
        return self._new_operation(request, "Async GPT Completion", result)

    def _new_operation(
        self, request: web.Request, description: str, response: dict[str, Any]
    ) -> web.Response:
        op = _Operation(
            id="d7q" + uuid.uuid4().hex[:17],
            description=description,
            polls_left=self.operation_polls,
            response=response,
        )
        fault = self.fault_of(request)
        if fault is not None and fault.kind == "operation_error":
            op.error = {"code": fault.grpc_code, "message": fault.message, "details": []}
        self.operations[op.id] = op
        return web.json_response(op.to_json())

    # --- the OpenAI-compatible surface ---

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._guard(request, self._do_chat)

    async def _do_chat(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest(400, "model is required")
        self._model_uri(model, "gpt", TEXT_MODELS | GALLERY_MODELS | self.vision_models)
        return await chat(
            self,
            request,
            body,
            vision=self._model_name(model) in self.vision_models,
            reply=self.reply,
            image_cost=lambda image: IMAGE_TOKENS,
            received=self.received_images,
        )

    # --- operations host ---

    async def _get_operation(self, request: web.Request) -> web.StreamResponse:
        return await self._guard(request, self._do_get_operation)

    async def _do_get_operation(
        self, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        op = self.operations.get(request.match_info["op_id"])
        if op is None:
            raise BadRequest(404, "Operation not found")
        op.polls_left -= 1
        return web.json_response(op.to_json())

    async def _cancel_operation(self, request: web.Request) -> web.StreamResponse:
        return await self._guard(request, self._do_cancel_operation)

    async def _do_cancel_operation(
        self, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        op_id, _, verb = request.match_info["op_id"].partition(":")
        if verb != "cancel":
            raise BadRequest(404, "Not found")
        op = self.operations.get(op_id)
        if op is None:
            raise BadRequest(404, "Operation not found")
        op.cancelled = True
        return web.json_response(op.to_json())

    # --- images ---

    async def _image_async(self, request: web.Request) -> web.StreamResponse:
        return await self._guard(request, self._do_image_async)

    async def _do_image_async(
        self, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        self._model(body, "art", {"yandex-art"})
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest(400, "messages: at least one message is required")
        for m in messages:
            text = m.get("text") if isinstance(m, dict) else None
            if not isinstance(text, str) or not text:
                raise BadRequest(400, "messages: text is required")
            if len(text) > 500:
                raise BadRequest(400, "messages: text must be at most 500 characters")
            float(m.get("weight", "1"))
        options = body.get("generationOptions") or {}
        if options.get("mimeType", "image/jpeg") != "image/jpeg":
            raise BadRequest(400, f"Unsupported mime type {options.get('mimeType')}")
        seed = options.get("seed")
        if seed is not None:
            int(seed)
        ratio = options.get("aspectRatio")
        if ratio is not None and (
            int(ratio.get("widthRatio", 0)) <= 0 or int(ratio.get("heightRatio", 0)) <= 0
        ):
            raise BadRequest(400, "aspectRatio: ratios must be positive")
        image = fake_image(messages[0]["text"], None if seed is None else str(seed))
        return self._new_operation(
            request,
            "Image generation",
            {"image": base64.b64encode(image).decode(), "modelVersion": "yandex-art-2.0"},
        )

    # --- tokenizer, embeddings, classification ---

    async def _tokenize(self, request: web.Request) -> web.StreamResponse:
        return await self._guard(request, self._do_tokenize)

    async def _do_tokenize(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        self._model(body, "gpt", TEXT_MODELS)
        text = body.get("text")
        if not isinstance(text, str):
            raise BadRequest(400, "text is required")
        tokens = [
            {"id": str(int.from_bytes(hashlib.sha256(w.encode()).digest()[:3], "big")),
             "text": w, "special": False}
            for w in words(text)
        ]  # fmt: skip
        return web.json_response({"tokens": tokens, "modelVersion": "23.10.2024"})

    async def _tokenize_completion(self, request: web.Request) -> web.StreamResponse:
        return await self._guard(request, self._do_tokenize_completion)

    async def _do_tokenize_completion(
        self, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        self._model(body, "gpt", TEXT_MODELS)
        tokens: list[dict[str, Any]] = []
        for m in self._messages(body):
            tokens.append({"id": "1", "text": f"[{m['role']}]", "special": True})
            tokens += [{"id": "2", "text": w, "special": False} for w in words(m["text"])]
        return web.json_response({"tokens": tokens, "modelVersion": "23.10.2024"})

    async def _embedding(self, request: web.Request) -> web.StreamResponse:
        return await self._guard(request, self._do_embedding)

    async def _do_embedding(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        uri = self._model(body, "emb", {"text-search-doc", "text-search-query"})
        text = body.get("text")
        if not isinstance(text, str) or not text:
            raise BadRequest(400, "text is required")
        return web.json_response(
            {
                "embedding": fake_embedding(text, uri),
                "numTokens": str(len(words(text))),
                "modelVersion": "06.12.2023",
            }
        )

    async def _classify(self, request: web.Request) -> web.StreamResponse:
        return await self._guard(request, self._do_classify)

    async def _do_classify(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        self._model(body, "cls", TEXT_MODELS)
        labels = body.get("labels")
        text = body.get("text")
        if not isinstance(labels, list) or not 1 <= len(labels) <= 20:
            raise BadRequest(400, "labels: give 1 to 20 labels")
        if not isinstance(text, str) or not text:
            raise BadRequest(400, "text is required")
        if not isinstance(body.get("taskDescription"), str):
            raise BadRequest(400, "taskDescription is required")
        samples = body.get("samples") or []
        for s in samples:
            if s.get("label") not in labels:
                raise BadRequest(400, f"samples: unknown label {s.get('label')!r}")
        # Score = 1 + words shared with the label and with its samples: deterministic, and the
        # obvious label wins, which is all a protocol test needs.
        seen = set(words(text.lower()))
        scores = {
            label: 1
            + len(seen & set(words(label.lower())))
            + sum(len(seen & set(words(s["text"].lower()))) for s in samples if s["label"] == label)
            for label in labels
        }
        total = sum(scores.values())
        predictions = [{"label": k, "confidence": v / total} for k, v in scores.items()]
        return web.json_response(
            {
                "predictions": predictions,
                "modelVersion": "23.10.2024",
                "inputTokens": str(len(words(text))),
            }
        )

"""OpenTelemetry traces (issue 20, the ``otel`` extra): with OTEL_EXPORTER_OTLP_ENDPOINT set, a
span per turn and a GenAI ``chat`` span per model call reach an OTLP/HTTP collector (a fake one
here, decoding the protobuf the SDK posts)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pydantic import SecretStr

from bot.dialog import DialogManager
from bot.events import ImageReply, Incoming, Notice
from bot.models.yandex import YandexClient, YandexCredentials
from bot.observe import tracing
from bot.observe.server import serving
from bot.stores import open_store
from tests.conftest import free_port
from tests.fakes import FakeOpenAI, FakeYandex, Fault
from tests.test_image_routing import IMAGE, art
from tests.test_metrics import openai_manager
from tests.test_web_api import send
from tests.web_server import FMBOT, web_env
from tests.web_server import serving as web_serving


class Collector:
    """POST /v1/traces: every span received, with its ids, kind, links, status and the role of
    the process that sent it."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.resources: list[dict[str, Any]] = []
        self.port = free_port()

    async def receive(self, request: web.Request) -> web.Response:
        body = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in body.resource_spans:
            self.resources.append(_attributes(resource_spans.resource.attributes))
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans.append(
                        {
                            "name": span.name,
                            "attributes": _attributes(span.attributes),
                            "id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex(),
                            "trace": span.trace_id.hex(),
                            "kind": span.kind,  # 1 internal, 3 client, 4 producer, 5 consumer
                            "links": [(k.trace_id.hex(), k.span_id.hex()) for k in span.links],
                            "error": span.status.code == 2,  # STATUS_CODE_ERROR
                            "role": self.resources[-1].get("fmbot.role"),
                        }
                    )
        return web.Response(status=200)

    def named(self, name: str) -> list[dict[str, Any]]:
        return [s for s in self.spans if s["name"] == name]


def _attributes(attributes: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in attributes}


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


@contextlib.asynccontextmanager
async def collecting() -> AsyncIterator[Collector]:
    """A Collector listening on 127.0.0.1 while the block runs."""
    c = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", c.receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", c.port).start()
    try:
        yield c
    finally:
        await runner.cleanup()


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    async with collecting() as c:
        yield c


@pytest.fixture
async def openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


async def test_turns_and_model_calls_are_spans_with_genai_attributes(
    collector: Collector, openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.port}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "fmbot-test")
    monkeypatch.delenv(tracing.CAPTURE_VARIABLE, raising=False)
    manager = await openai_manager(openai)
    openai.reply = "one two three"
    async with serving(None, "worker"):
        assert tracing.enabled()
        async for _ in manager.handle(Incoming("chat-t1", "secret words zxcv")):
            pass
        openai.inject(Fault("status", status=500), times=10)
        async for _ in manager.handle(Incoming("chat-t2", "more words")):
            pass
    assert not tracing.enabled()  # the block's end flushed and stopped it
    assert {"service.name": "fmbot-test", "fmbot.role": "worker"}.items() <= (
        collector.resources[0].items()
    )
    turns = {
        s["attributes"]["gen_ai.conversation.id"]: s
        for s in collector.spans
        if s["name"] == "fmbot turn"
    }
    calls = [s for s in collector.spans if s["name"] == "chat gpt-test"]
    assert set(turns) == {"chat-t1", "chat-t2"} and len(calls) == 2
    for call in calls:
        turn = turns[call["attributes"]["gen_ai.conversation.id"]]
        assert (call["parent"], call["trace"]) == (turn["id"], turn["trace"])
        assert call["attributes"]["gen_ai.operation.name"] == "chat"
        assert call["attributes"]["gen_ai.provider.name"] == "openai"
        assert call["attributes"]["gen_ai.request.model"] == "gpt-test"
    ok, failed = sorted(calls, key=lambda s: s["attributes"]["gen_ai.conversation.id"])
    assert ok["attributes"]["gen_ai.usage.output_tokens"] == 3
    assert ok["attributes"]["gen_ai.usage.input_tokens"] > 0
    assert "error.type" not in ok["attributes"] and not ok["error"]
    assert failed["attributes"]["error.type"] == "5xx" and failed["error"]  # status ERROR
    assert turns["chat-t1"]["attributes"]["fmbot.turn.status"] == "ok"
    assert not turns["chat-t1"]["error"] and "error.type" not in turns["chat-t1"]["attributes"]
    assert turns["chat-t2"]["attributes"]["fmbot.turn.status"] == "error"
    # The failed turn: status ERROR, with the model's error kind.
    assert turns["chat-t2"]["error"] and turns["chat-t2"]["attributes"]["error.type"] == "5xx"
    # The turn's steps are its children: history read, prompt build and, for the answered
    # turn, the store write (the failed one stored nothing).
    steps = {"fmbot history read", "fmbot prompt build", "fmbot store write"}
    children = {(s["name"], s["parent"]) for s in collector.spans if s["name"] in steps}
    ok_turn, failed_turn = turns["chat-t1"]["id"], turns["chat-t2"]["id"]
    assert children == {(name, ok_turn) for name in steps} | {
        ("fmbot history read", failed_turn),
        ("fmbot prompt build", failed_turn),
    }
    assert not any(s["error"] for s in collector.spans if s["name"] in steps)
    assert ok["attributes"]["gen_ai.response.finish_reasons"] == ["stop"]
    assert failed["attributes"]["gen_ai.response.finish_reasons"] == ["error"]
    assert "zxcv" not in str(collector.spans)  # no message content without the flag
    assert not any("gen_ai.input.messages" in s["attributes"] for s in collector.spans)
    assert not any("gen_ai.output.messages" in s["attributes"] for s in collector.spans)


@pytest.mark.parametrize("flag", ["true", "TRUE", "span_only"])
async def test_message_content_is_recorded_only_when_capture_is_set(
    collector: Collector, openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, flag: str
) -> None:
    """OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT: the GenAI conventions' input and
    output messages on the model call's span, as JSON; unset or false, none (the same turn)."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.port}")
    manager = await openai_manager(openai)
    openai.reply = "one two three"
    for chat, value in (("chat-unset", None), ("chat-false", "false"), ("chat-on", flag)):
        if value is None:
            monkeypatch.delenv(tracing.CAPTURE_VARIABLE, raising=False)
        else:
            monkeypatch.setenv(tracing.CAPTURE_VARIABLE, value)
        async with serving(None, "worker"):
            async for _ in manager.handle(Incoming(chat, "secret words zxcv")):
                pass
    calls = {s["attributes"]["gen_ai.conversation.id"]: s for s in collector.named("chat gpt-test")}
    assert set(calls) == {"chat-unset", "chat-false", "chat-on"}
    for chat in ("chat-unset", "chat-false"):
        assert "zxcv" not in str(calls[chat]) and "one two three" not in str(calls[chat])
        assert "gen_ai.input.messages" not in calls[chat]["attributes"]
        assert "gen_ai.output.messages" not in calls[chat]["attributes"]
    on = calls["chat-on"]["attributes"]
    sent = json.loads(on["gen_ai.input.messages"])
    assert sent[-1] == {"role": "user", "parts": [{"type": "text", "content": "secret words zxcv"}]}
    assert {m["role"] for m in sent} <= {"system", "user", "assistant"}
    assert json.loads(on["gen_ai.output.messages"]) == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "one two three"}],
            "finish_reason": "stop",
        }
    ]
    # Only the model call carries content: the turn and its steps do not.
    others = [s for s in collector.spans if s["name"] != "chat gpt-test"]
    assert others and "zxcv" not in str(others)


async def test_without_an_endpoint_nothing_is_traced(
    openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in tracing.ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    manager = await openai_manager(openai)
    async with serving(None, "worker"):
        assert not tracing.enabled()
        async for _ in manager.handle(Incoming("chat-t3", "hello")):
            pass


async def test_a_cut_reply_and_a_failed_step_are_errors_a_refused_reply_is_not(
    collector: Collector, openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Span status ERROR, as exported, on what failed: the model call and the turn of a reply
    cut short (error.type the model's error kind), a step whose store is down and its turn
    (error.type the exception's class); a refusal (the content filter) is an answer, its turn
    no error."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.port}")
    manager = await openai_manager(openai)
    openai.reply = "one two three four five six"
    dead = await open_store(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    down = DialogManager(dead, manager.model, manager.prompts)
    try:
        async with serving(None, "worker"):
            openai.inject(Fault("cut", after=2))
            async for _ in manager.handle(Incoming("chat-cut", "hello")):
                pass
            openai.inject(Fault("content_filter", after=0))
            async for _ in manager.handle(Incoming("chat-refused", "hello")):
                pass
            async for _ in down.handle(Incoming("chat-down", "hello")):
                pass
    finally:
        await dead.aclose()
    turns = {s["attributes"]["gen_ai.conversation.id"]: s for s in collector.named("fmbot turn")}
    statuses = {chat: turn["attributes"]["fmbot.turn.status"] for chat, turn in turns.items()}
    assert statuses == {"chat-cut": "interrupted", "chat-refused": "refused", "chat-down": "error"}
    calls = {s["attributes"]["gen_ai.conversation.id"]: s for s in collector.named("chat gpt-test")}
    assert set(calls) == {"chat-cut", "chat-refused"}  # the store failed before any model call
    cut = calls["chat-cut"]
    assert cut["error"] and cut["attributes"]["error.type"] == "cut_stream"
    assert turns["chat-cut"]["error"] and turns["chat-cut"]["attributes"]["error.type"] == (
        "cut_stream"
    )
    assert not turns["chat-refused"]["error"]
    assert "error.type" not in turns["chat-refused"]["attributes"]
    (read,) = [
        s for s in collector.named("fmbot history read") if s["parent"] == turns["chat-down"]["id"]
    ]
    assert read["error"] and read["attributes"]["error.type"] == "StoreError"
    # The exception that failed the turn names its error.type (no model error to say why).
    down_turn = turns["chat-down"]
    assert down_turn["error"] and down_turn["attributes"]["error.type"] == "StoreError"
    others = [s for s in collector.named("fmbot history read") if s is not read]
    assert len(others) == 2 and not any(s["error"] for s in others)


@pytest.fixture
async def yandex() -> AsyncIterator[FakeYandex]:
    async with FakeYandex() as server:
        yield server


async def test_an_image_turn_has_its_model_call_and_store_write(
    collector: Collector,
    openai: FakeOpenAI,
    yandex: FakeYandex,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """/image: a ``generate_content`` span for the picture (YandexART, the fake) and the store
    write, under the turn; a failed generation is an error on both the call and the turn."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.port}")
    monkeypatch.delenv(tracing.CAPTURE_VARIABLE, raising=False)
    credentials = YandexCredentials(
        folder_id=yandex.folder_id, api_key=SecretStr(yandex.api_key), iam_token=None
    )
    client = YandexClient(credentials, fm_url=yandex.llm_url, operations_url=yandex.operations_url)
    text = await openai_manager(openai)
    manager = DialogManager(text.store, text.model, text.prompts, image_model=art(client))
    try:
        async with serving(None, "worker"):
            drawn = [e async for e in manager.handle(Incoming("chat-art", "/image a red zxcv"))]
            yandex.inject(Fault("operation_error", grpc_code=3, message="refused"), path=IMAGE)
            failed = [e async for e in manager.handle(Incoming("chat-no-art", "/image a cat"))]
    finally:
        await client.aclose()
    assert isinstance(drawn[-1], ImageReply)
    assert isinstance(failed[-1], Notice) and failed[-1].kind == "error"
    turns = {s["attributes"]["gen_ai.conversation.id"]: s for s in collector.named("fmbot turn")}
    calls = {
        s["attributes"]["gen_ai.conversation.id"]: s
        for s in collector.spans
        if s["attributes"].get("gen_ai.operation.name") == "generate_content"
    }
    assert set(turns) == set(calls) == {"chat-art", "chat-no-art"}
    model = art(client).name.partition(":")[2]
    for chat, call in calls.items():
        assert call["name"] == f"generate_content {model}" and call["kind"] == 3  # CLIENT
        assert (call["parent"], call["trace"]) == (turns[chat]["id"], turns[chat]["trace"])
        assert call["attributes"]["gen_ai.provider.name"] == "yandex"
        assert call["attributes"]["gen_ai.request.model"] == model
    assert not calls["chat-art"]["error"] and not turns["chat-art"]["error"]
    assert calls["chat-art"]["attributes"]["gen_ai.response.finish_reasons"] == ["stop"]
    assert calls["chat-no-art"]["error"] and turns["chat-no-art"]["error"]
    assert calls["chat-no-art"]["attributes"]["error.type"] == "other"
    assert turns["chat-no-art"]["attributes"]["error.type"] == "other"
    # The picture stored: a step of its turn; the failed one stored nothing.
    writes = collector.named("fmbot store write")
    assert [w["parent"] for w in writes] == [turns["chat-art"]["id"]]
    assert "zxcv" not in str(collector.spans)  # the prompt only when content is captured


async def test_a_drawing_requests_prompt_rewrite_is_a_chat_span_of_its_turn(
    collector: Collector,
    openai: FakeOpenAI,
    yandex: FakeYandex,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plain request to draw: the text model's rewrite of it into the picture's prompt is a
    ``chat`` span under the turn, beside the ``generate_content`` one; a failed rewrite is an
    error on its span only — the picture, drawn from the request as is, decides the turn."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.port}")
    monkeypatch.delenv(tracing.CAPTURE_VARIABLE, raising=False)
    credentials = YandexCredentials(
        folder_id=yandex.folder_id, api_key=SecretStr(yandex.api_key), iam_token=None
    )
    client = YandexClient(credentials, fm_url=yandex.llm_url, operations_url=yandex.operations_url)
    text = await openai_manager(openai)
    manager = DialogManager(text.store, text.model, text.prompts, image_model=art(client))
    openai.reply = "a red apple, watercolor"
    try:
        async with serving(None, "worker"):
            drawn = [e async for e in manager.handle(Incoming("chat-rw", "draw a red zxcv"))]
            openai.inject(Fault("status", status=500), times=10)  # past the retries
            plain = [e async for e in manager.handle(Incoming("chat-no-rw", "draw a cat"))]
    finally:
        await client.aclose()
    assert isinstance(drawn[-1], ImageReply) and isinstance(plain[-1], ImageReply)
    turns = {s["attributes"]["gen_ai.conversation.id"]: s for s in collector.named("fmbot turn")}
    rewrites = {
        s["attributes"]["gen_ai.conversation.id"]: s for s in collector.named("chat gpt-test")
    }
    pictures = {
        s["attributes"]["gen_ai.conversation.id"]: s
        for s in collector.spans
        if s["attributes"].get("gen_ai.operation.name") == "generate_content"
    }
    assert set(turns) == set(rewrites) == set(pictures) == {"chat-rw", "chat-no-rw"}
    for chat, call in rewrites.items():
        turn = turns[chat]
        assert (call["parent"], call["trace"]) == (turn["id"], turn["trace"])
        assert call["kind"] == 3  # CLIENT
        assert call["attributes"]["gen_ai.operation.name"] == "chat"
        assert call["attributes"]["gen_ai.provider.name"] == "openai"
        assert call["attributes"]["gen_ai.request.model"] == "gpt-test"
        assert pictures[chat]["parent"] == turn["id"]
        # The picture's outcome is the turn's.
        assert turn["attributes"]["fmbot.turn.status"] == "ok" and not turn["error"]
        assert "error.type" not in turn["attributes"] and not pictures[chat]["error"]
    ok, failed = rewrites["chat-rw"], rewrites["chat-no-rw"]
    assert not ok["error"] and "error.type" not in ok["attributes"]
    # The fake's usage: a token a word.
    assert ok["attributes"]["gen_ai.usage.output_tokens"] == len(openai.reply.split())
    assert ok["attributes"]["gen_ai.usage.input_tokens"] > 0
    assert ok["attributes"]["gen_ai.response.finish_reasons"] == ["stop"]
    assert failed["error"] and failed["attributes"]["error.type"] == "5xx"
    assert failed["attributes"]["gen_ai.response.finish_reasons"] == ["error"]
    assert "gen_ai.usage.output_tokens" not in failed["attributes"]
    assert "zxcv" not in str(collector.spans)  # no content without the flag


async def test_fmbot_web_delivers_a_reply_in_a_span_of_its_turn(
    collector: Collector, tmp_path: Path
) -> None:
    """A real ``fmbot web``: the reply's ``final`` event sent over SSE is ``fmbot deliver``
    (channel web) under the turn, though the stream steps the turn from other tasks."""
    env = web_env(
        tmp_path,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.port}",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    env.pop(tracing.CAPTURE_VARIABLE, None)

    def session() -> None:  # blocking: in a thread, so the collector keeps answering
        with web_serving(env, tmp_path) as web:
            asyncio.run(chat(web.url))

    async def chat(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            got = await send(client, "w1", "hello traces")
            assert got[-1] == (
                "final",
                {"text": "echo: hello traces", "status": "complete", "sources": []},
            )
            assert (await send(client, "w1", "/help"))[-1][1]["status"] == "none"

    await asyncio.wait_for(asyncio.to_thread(session), 120)  # exits 0: spans flushed
    (turn,) = collector.named("fmbot turn")  # /help is a command, not a turn
    assert turn["role"] == "web" and turn["attributes"]["fmbot.channel"] == "web"
    (deliver,) = collector.named("fmbot deliver")
    assert (deliver["parent"], deliver["trace"]) == (turn["id"], turn["trace"])
    assert deliver["attributes"] == {"fmbot.channel": "web", "fmbot.reply": "complete"}
    assert not deliver["error"]


async def test_fmbot_console_traces_its_turns_and_deliveries(
    collector: Collector, tmp_path: Path
) -> None:
    """``fmbot console`` sets tracing up like the other commands: a piped turn is traced, its
    end written in an ``fmbot deliver`` span (channel console)."""
    env = web_env(tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.port}")
    env.pop(tracing.CAPTURE_VARIABLE, None)
    # An asyncio subprocess keeps this event loop (and so the collector) running meanwhile.
    proc = await asyncio.create_subprocess_exec(
        FMBOT,
        "console",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(b"hello console\n/help\n"), 120)
    assert proc.returncode == 0, err.decode()
    assert "echo: hello console" in out.decode()
    (turn,) = collector.named("fmbot turn")
    assert turn["role"] == "console" and turn["attributes"]["fmbot.channel"] == "console"
    (deliver,) = collector.named("fmbot deliver")
    assert deliver["parent"] == turn["id"]
    assert deliver["attributes"] == {"fmbot.channel": "console", "fmbot.reply": "complete"}

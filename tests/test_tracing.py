"""OpenTelemetry traces (issue 20, the ``otel`` extra): with OTEL_EXPORTER_OTLP_ENDPOINT set, a
span per turn and a GenAI ``chat`` span per model call reach an OTLP/HTTP collector (a fake one
here, decoding the protobuf the SDK posts)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from bot.events import Incoming
from bot.observe import tracing
from bot.observe.server import serving
from tests.conftest import free_port
from tests.fakes import FakeOpenAI, Fault
from tests.test_metrics import openai_manager


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
    assert "error.type" not in ok["attributes"]
    assert failed["attributes"]["error.type"] == "5xx"
    assert turns["chat-t1"]["attributes"]["fmbot.turn.status"] == "ok"
    assert turns["chat-t2"]["attributes"]["fmbot.turn.status"] == "error"
    # The turn's steps are its children: history read, prompt build and, for the answered
    # turn, the store write (the failed one stored nothing).
    steps = {"fmbot history read", "fmbot prompt build", "fmbot store write"}
    children = {(s["name"], s["parent"]) for s in collector.spans if s["name"] in steps}
    ok_turn, failed_turn = turns["chat-t1"]["id"], turns["chat-t2"]["id"]
    assert children == {(name, ok_turn) for name in steps} | {
        ("fmbot history read", failed_turn),
        ("fmbot prompt build", failed_turn),
    }
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

"""OpenTelemetry traces (issue 20, the ``otel`` extra): with OTEL_EXPORTER_OTLP_ENDPOINT set, a
span per turn and a GenAI ``chat`` span per model call reach an OTLP/HTTP collector (a fake one
here, decoding the protobuf the SDK posts)."""

from __future__ import annotations

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
    """POST /v1/traces: every span received, as (name, attributes, ids)."""

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
                        }
                    )
        return web.Response(status=200)


def _attributes(attributes: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for kv in attributes:
        kind = kv.value.WhichOneof("value")
        found[kv.key] = getattr(kv.value, kind) if kind else None
    return found


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    c = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", c.receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", c.port).start()
    yield c
    await runner.cleanup()


@pytest.fixture
async def openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


async def test_turns_and_model_calls_are_spans_with_genai_attributes(
    collector: Collector, openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.port}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "fmbot-test")
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
    assert "zxcv" not in str(collector.spans)  # message content is never recorded


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

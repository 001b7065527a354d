"""OpenTelemetry traces, with the optional extra ``fmbot[otel]``: with
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) set, each turn is a
span ``fmbot turn`` with child spans for its steps (``fmbot history read``, ``fmbot prompt
build``, ``fmbot store write``) and its model call, ``chat MODEL``, with the GenAI semantic
conventions (``gen_ai.operation.name``, ``gen_ai.provider.name``, ``gen_ai.request.model``,
``gen_ai.usage.input_tokens``/``output_tokens``, ``gen_ai.conversation.id``, ``error.type``).
Message content is never recorded. Spans go over OTLP/HTTP from the SDK's export thread, so the
event loop never waits for the collector; the standard ``OTEL_*`` variables configure it.

Without the endpoint, or without the extra, every call here is a check of one global.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

#: The SDK's tracer while tracing is on (typed loosely: the extra may not be installed).
_tracer: Any = None


def enabled() -> bool:
    return _tracer is not None


def setup(role: str) -> Callable[[], None] | None:
    """Start exporting spans when an OTLP endpoint is configured; the function that flushes
    and stops, or None when tracing stays off."""
    global _tracer
    if not any(os.environ.get(name) for name in ENDPOINT_VARIABLES):
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed: "
            "pip install 'fmbot[otel]'; no traces"
        )
        return None
    resource = Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME") or "fmbot", "fmbot.role": role}
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _tracer = provider.get_tracer("fmbot")

    def shutdown() -> None:
        global _tracer
        _tracer = None
        provider.shutdown()  # exports what is left

    return shutdown


def start_turn(chat: str, channel: str, turn_id: str) -> Any:
    """The span of a turn (not made current: a turn's model span names it as parent)."""
    if _tracer is None:
        return None
    return _tracer.start_span(
        "fmbot turn",
        attributes={
            "gen_ai.conversation.id": chat,
            "fmbot.channel": channel,
            "fmbot.turn.id": turn_id,
        },
    )


def end_turn(span: Any, status: str) -> None:
    if span is not None:
        span.set_attribute("fmbot.turn.status", status)
        if status == "error":
            span.set_attribute("error.type", "error")
        span.end()


def start_child(parent: Any, name: str) -> Any:
    """A span for one step of a turn (history read, prompt build, store write)."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    return _tracer.start_span(name, context=trace.set_span_in_context(parent))


def start_model_call(parent: Any, model: str, chat: str) -> Any:
    """A ``chat`` span under the turn's; ``model`` is fmbot's spec (``openai:gpt-4o``)."""
    if _tracer is None or parent is None:
        return None
    from opentelemetry import trace

    provider, _, name = model.partition(":")
    return _tracer.start_span(
        f"chat {name or model}",
        context=trace.set_span_in_context(parent),
        kind=trace.SpanKind.CLIENT,
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": name or model,
            "gen_ai.conversation.id": chat,
        },
    )


def end_model_call(
    span: Any, input_tokens: int | None, output_tokens: int | None, error: str | None
) -> None:
    if span is None:
        return
    if input_tokens is not None and output_tokens is not None:
        span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
    if error is not None:
        span.set_attribute("error.type", error)
    span.end()

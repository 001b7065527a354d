"""OpenTelemetry traces, with the optional extra ``fmbot[otel]``: with
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) set, each turn is a
span ``fmbot turn`` with child spans for its steps (``fmbot history read``, ``fmbot prompt
build``, ``fmbot store write``, a channel's ``fmbot deliver``) and its model calls, ``chat
MODEL`` (``generate_content MODEL`` for a picture, after the ``chat`` that rewrites a drawing
request into its prompt), with the GenAI semantic conventions
(``gen_ai.operation.name``, ``gen_ai.provider.name``, ``gen_ai.request.model``,
``gen_ai.usage.input_tokens``/``output_tokens``, ``gen_ai.response.finish_reasons``,
``gen_ai.conversation.id``, ``error.type``; a failed span's status is error). Message content
(``gen_ai.input.messages``, ``gen_ai.output.messages``) is recorded only when
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` is ``true``. Spans go over OTLP/HTTP from
the SDK's export thread, so the event loop never waits for the collector; the standard
``OTEL_*`` variables configure it. The queue's spans: :mod:`bot.observe.messaging`.

Without the endpoint, or without the extra, every call here is a check of one global.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any

from bot.events import Usage

log = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
CAPTURE_VARIABLE = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
#: Values that put content on spans: ``true`` (the variable's original meaning) and the newer
#: GenAI instrumentations' modes that include spans. ``EVENT_ONLY``: fmbot emits no events.
_CAPTURE_VALUES = ("true", "span_only", "span_and_event")
#: How a reply ended (fmbot's status) as a GenAI finish reason.
FINISH_REASONS = {"ok": "stop", "refused": "content_filter", "stopped": "cancelled"}

#: The SDK's tracer while tracing is on (typed loosely: the extra may not be installed).
_tracer: Any = None
#: Whether model spans carry the messages (read when tracing starts).
_capture = False
#: The innermost span a :class:`Child` block made current (the parent of spans started inside).
_current: ContextVar[Any] = ContextVar("fmbot_span", default=None)


def enabled() -> bool:
    return _tracer is not None


def tracer() -> Any:
    """The SDK's tracer while tracing is on, else None (for the modules that add spans)."""
    return _tracer


def setup(role: str) -> Callable[[], None] | None:
    """Start exporting spans when an OTLP endpoint is configured; the function that flushes
    and stops, or None when tracing stays off."""
    global _tracer, _capture
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
    _capture = os.environ.get(CAPTURE_VARIABLE, "").strip().lower() in _CAPTURE_VALUES

    def shutdown() -> None:
        global _tracer, _capture
        _tracer, _capture = None, False
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


def end_turn(span: Any, status: str, error_type: str | None = None) -> None:
    """``error_type``: the model's error kind when a model call failed the turn, else the class
    of the exception that did (default: ``status``)."""
    if span is not None:
        span.set_attribute("fmbot.turn.status", status)
        if status in _FAILED:
            failed(span, error_type or status)
        span.end()


#: Turn statuses that mark its span failed (stopped, refused and limited are answers).
_FAILED = ("error", "interrupted")


def start_child(parent: Any, name: str, attributes: dict[str, Any] | None = None) -> Any:
    """A span for one step of a turn (history read, prompt build, store write), not made
    current: it may be ended in another context (a generator closed by another task)."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    context = trace.set_span_in_context(parent)
    return _tracer.start_span(name, context=context, attributes=attributes)


class Child:
    """A child span while a block runs, the parent of spans started inside it (:func:`current`);
    a block that raises marks it failed with ``error.type``, the exception's class (no message:
    it can carry what users wrote or a secret, and spans pass no log filter)."""

    __slots__ = ("_kind_of", "_token", "span")

    def __init__(self, span: Any, kind_of: Callable[[Exception], str] | None = None) -> None:
        self.span = span
        self._kind_of = kind_of
        self._token: Any = None

    def __enter__(self) -> Any:
        self._token = _current.set(self.span)
        return self.span

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        _current.reset(self._token)
        if isinstance(exc, Exception):  # cancellation is no failure
            failed(self.span, self._kind_of(exc) if self._kind_of else type(exc).__name__)
        self.span.end()


_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()


def child(
    name: str,
    parent: Any,
    attributes: dict[str, Any],
    *,
    client: bool = False,
    kind_of: Callable[[Exception], str] | None = None,
) -> contextlib.AbstractContextManager[Any]:
    """``with child("fmbot history read", turn_span, {...}) as span:`` (span None when not traced:
    tracing off or no parent). ``client``: a call to another service (span kind CLIENT);
    ``kind_of``: the ``error.type`` of an exception (default: its class name)."""
    if _tracer is None or parent is None:
        return _NO_SPAN
    from opentelemetry import trace

    kind = trace.SpanKind.CLIENT if client else trace.SpanKind.INTERNAL
    context = trace.set_span_in_context(parent)
    span = _tracer.start_span(name, context=context, kind=kind, attributes=attributes)
    return Child(span, kind_of)


def deliver(
    turn_span: Any,
    channel: str,
    reply: str,
    attributes: dict[str, Any] | None = None,
    *,
    kind_of: Callable[[Exception], str] | None = None,
) -> contextlib.AbstractContextManager[Any]:
    """``with deliver(turn.span, "console", "complete"):`` the ``fmbot deliver`` span of a
    channel delivering a reply (span None when not traced), a child of ``turn_span``, else of
    the OpenTelemetry context's span (a queue job's: a stored reply sent again after a restart).
    ``reply``: ``complete``, ``partial``, ``stopped``, ``redelivered``; ``attributes``: the
    channel's own; ``kind_of`` as for :func:`child`. Tracing off: one check of a global."""
    span = start_delivery(turn_span, channel, reply, attributes)
    return _NO_SPAN if span is None else Child(span, kind_of)


def start_delivery(
    turn_span: Any, channel: str, reply: str, attributes: dict[str, Any] | None = None
) -> Any:
    """The span of :func:`deliver`, started but neither made current nor ended, or None: for
    a delivery that stays open across a ``yield`` (the web's ``final`` event, sent once the
    generator is resumed), which a context-manager block can't span: the generator may be
    closed from another context, where resetting the current span would raise. The caller
    ends it."""
    if _tracer is None:
        return None
    parent = turn_span or ambient()
    if parent is None:
        return None
    return start_child(
        parent,
        "fmbot deliver",
        {"fmbot.channel": channel, "fmbot.reply": reply, **(attributes or {})},
    )


def current() -> Any:
    """The span of the innermost :func:`child` block running in this context, or None."""
    return _current.get()


def ambient() -> Any:
    """The OpenTelemetry context's current span (a queue job's process span), or None."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    span = trace.get_current_span()
    return span if span.get_span_context().is_valid else None


def failed(span: Any, error_type: str) -> None:
    """Mark ``span`` failed with a low-cardinality ``error.type``."""
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR))


def capturing() -> bool:
    """Whether message content goes on model spans (see CAPTURE_VARIABLE)."""
    return _capture


def start_model_call(
    parent: Any,
    model: str,
    chat: str,
    messages: Iterable[tuple[str, str]] = (),
    *,
    operation: str = "chat",
) -> Any:
    """A ``chat`` span under the turn's; ``model`` is fmbot's spec (``openai:gpt-4o``),
    ``messages`` the prompt as (role, text), recorded only when content is captured;
    ``operation``: ``generate_content`` for a picture (the conventions' multimodal one)."""
    if _tracer is None or parent is None:
        return None
    from opentelemetry import trace

    provider, _, name = model.partition(":")
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": name or model,
        "gen_ai.conversation.id": chat,
    }
    if _capture:
        # The conventions' input messages, as a JSON string (OTLP attributes hold no objects).
        attributes["gen_ai.input.messages"] = json.dumps(
            [_message(role, text) for role, text in messages], ensure_ascii=False
        )
    return _tracer.start_span(
        f"{operation} {name or model}",
        context=trace.set_span_in_context(parent),
        kind=trace.SpanKind.CLIENT,
        attributes=attributes,
    )


def end_model_call(
    span: Any,
    usage: Usage | None,
    error: str | None,
    *,
    status: str | None = None,
    text: str | None = None,
) -> None:
    """``usage``: the tokens the model reported, if it did; ``status``: how the turn's reply
    ended (ok, stopped, refused, interrupted, error); ``text``: what the model wrote, recorded
    only when content is captured."""
    if span is None:
        return
    if usage is not None:
        span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
    if status is not None:
        reason = FINISH_REASONS.get(status, "error")
        span.set_attribute("gen_ai.response.finish_reasons", [reason])
        if _capture and text is not None:
            output = _message("assistant", text) | {"finish_reason": reason}
            span.set_attribute("gen_ai.output.messages", json.dumps([output], ensure_ascii=False))
    if error is not None:
        failed(span, error)
    span.end()


def _message(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "parts": [{"type": "text", "content": text}]}

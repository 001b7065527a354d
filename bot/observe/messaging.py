"""Trace context across the Redis queue, after the OpenTelemetry messaging conventions.

:meth:`bot.queue.Ingress.enqueue` is a ``send`` span (kind PRODUCER) whose trace context, as
the configured propagators write it (by default W3C ``traceparent``, and ``tracestate`` and
``baggage`` when there are any), is stored as extra fields of the job's stream entry, next to
``chat`` and ``payload``. The worker runs each attempt of a job's
handler in a ``process`` span (kind CONSUMER) that is current while the handler runs, so the
turn's span is its child. One job is one update, the conventions' single-message case: the
process span's parent is the job's creation context (the send span), and it links to it too. A
job that answers others with it (an album's first item) also links to their send spans.

Without tracing a job gets no field (no byte more in Redis), and a job without them (queued
before, or by an ingress that does not trace) is processed in a trace of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from bot.observe import tracing

#: No registered ``messaging.system`` value names Redis streams: the broker's name it is.
SYSTEM = "redis"
#: The fields every job has; any other field of a job's entry is the propagators'.
JOB_FIELDS = ("chat", "payload")


def _attributes(operation: str, destination: str, template: str, partition: int) -> dict[str, Any]:
    return {
        "messaging.system": SYSTEM,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": destination,
        "messaging.destination.template": template,
        "messaging.destination.partition.id": str(partition),
    }


def start_send(destination: str, template: str, partition: int) -> Any:
    """The producer span of one enqueue (None when tracing is off); named by the stream's
    template, one name for every partition."""
    tracer = tracing.tracer()
    if tracer is None:
        return None
    from opentelemetry.trace import SpanKind

    return tracer.start_span(
        f"send {template}",
        kind=SpanKind.PRODUCER,
        attributes=_attributes("send", destination, template, partition),
    )


def headers(span: Any) -> dict[str, str]:
    """The trace context of ``span`` as the job's extra fields."""
    from opentelemetry import propagate, trace

    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def end_send(
    span: Any, entry_id: str | None, *, duplicate: bool = False, error: str | None = None
) -> None:
    """``duplicate``: the update was queued before; the job keeps its first context."""
    if entry_id is not None:
        span.set_attribute("messaging.message.id", entry_id)
    if duplicate:
        span.set_attribute("fmbot.queue.duplicate", True)
    if error is not None:
        tracing.failed(span, error)
    span.end()


def context_of(fields: Mapping[str, str]) -> dict[str, str] | None:
    """The trace context among a job entry's fields, or None when it carries none."""
    if len(fields) <= len(JOB_FIELDS):  # queued without tracing: nothing more to look at
        return None
    return {name: value for name, value in fields.items() if name not in JOB_FIELDS}


class _Processing:
    """The process span of one handler call, current in the OpenTelemetry context meanwhile."""

    __slots__ = ("span", "token")

    def __init__(self, span: Any) -> None:
        self.span = span
        self.token: Any = None

    def __enter__(self) -> None:
        from opentelemetry import context, trace

        self.token = context.attach(trace.set_span_in_context(self.span))

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        from opentelemetry import context

        context.detach(self.token)
        # Cancellation is the worker giving the job up (it runs again elsewhere), no failure.
        if kind is not None and issubclass(kind, Exception):
            tracing.failed(self.span, kind.__name__)
        self.span.end()


_NOT_TRACED = contextlib.nullcontext()


def processing(
    trace_context: Mapping[str, str] | None,
    *,
    destination: str,
    template: str,
    partition: int,
    entry_id: str,
    group: str,
    attempt: int,
) -> contextlib.AbstractContextManager[None]:
    """``with processing(job.trace, ...): await handler(job)``; nothing when tracing is off."""
    tracer = tracing.tracer()
    if tracer is None:
        return _NOT_TRACED
    from opentelemetry import propagate, trace

    attributes = _attributes("process", destination, template, partition)
    attributes["messaging.message.id"] = entry_id
    attributes["messaging.consumer.group.name"] = group
    attributes["fmbot.queue.attempt"] = attempt
    parent = None
    links = []
    if trace_context:
        parent = propagate.extract(trace_context)
        created = trace.get_current_span(parent).get_span_context()
        if created.is_valid:
            links.append(trace.Link(created))
        else:  # a malformed traceparent: a trace of its own rather than the ambient one's
            parent = None
    span = tracer.start_span(
        f"process {template}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        links=links,
        attributes=attributes,
    )
    return _Processing(span)


def link_created(contexts: Iterable[Mapping[str, str] | None]) -> None:
    """Link the running job's process span to the enqueue of other jobs it answers (an
    album's items): a batch, which the conventions relate by links, not parents."""
    span = tracing.ambient()
    if span is None:
        return
    from opentelemetry import propagate, trace

    for context in contexts:
        if context:
            created = trace.get_current_span(propagate.extract(context)).get_span_context()
            if created.is_valid:
                span.add_link(created)

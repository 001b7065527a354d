"""fmbot's Prometheus families and the helpers that count into them.

Counting is off until :func:`enable` (``FMBOT_METRICS_LISTEN`` set): a process that exports
nothing pays only a flag check per helper call. Labels are low-cardinality on purpose: channel,
model, status, outcome, kind — never a chat or user id. The role (ingress, worker, all) is not
a label of the families: :func:`exposition` adds it to every sample of a scrape, so each call
site stays one ``labels().inc()``.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import time
import uuid
from collections.abc import Iterable, Iterator

import httpx
from prometheus_client import (
    REGISTRY,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from bot.errors import (
    AuthenticationError,
    ContentFilterError,
    ContextOverflowError,
    ModelError,
    ModelUnavailableError,
    PermissionDeniedError,
    RateLimitError,
    StreamInterruptedError,
)

# Seconds: chat turns run from well under a second (echo, cache hits) to minutes (long replies).
_TURN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
_FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32)

TURNS = Counter(
    "fmbot_turns", "Turns answered, by how they ended.", ["channel", "status"], registry=None
)
TURN_SECONDS = Histogram(
    "fmbot_turn_duration_seconds",
    "From the turn taking its chat's lock to its last event.",
    ["channel"],
    buckets=_TURN_BUCKETS,
    registry=None,
)
FIRST_TOKEN = Histogram(
    "fmbot_first_token_seconds",
    "From the model call to its first text.",
    ["channel", "model"],
    buckets=_FIRST_TOKEN_BUCKETS,
    registry=None,
)
MODEL_REQUESTS = Counter(
    "fmbot_model_requests", "Model calls of turns, by outcome.", ["model", "outcome"], registry=None
)
MODEL_ERRORS = Counter(
    "fmbot_model_errors", "Failed model calls, by kind.", ["model", "kind"], registry=None
)
MODEL_TOKENS = Counter(
    "fmbot_model_tokens",
    "Tokens of stored turns (estimated when the model reports none).",
    ["model", "direction"],
    registry=None,
)
IMAGES = Counter(
    "fmbot_images", "Pictures generated, by outcome.", ["model", "outcome"], registry=None
)

FAMILIES: tuple[Counter | Histogram, ...] = (
    TURNS,
    TURN_SECONDS,
    FIRST_TOKEN,
    MODEL_REQUESTS,
    MODEL_ERRORS,
    MODEL_TOKENS,
    IMAGES,
)
disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created: a timestamp per series
for _family in FAMILIES:
    REGISTRY.register(_family)  # after construction: the module can be imported twice in tests

_on = False


def enable(on: bool = True) -> None:
    """Start (or stop) counting in this process."""
    global _on
    _on = on


def enabled() -> bool:
    return _on


# --- the turn being run ---------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class TurnInfo:
    """The turn the current task runs: read by the metrics here and by log lines."""

    chat: str
    channel: str
    #: Also stored with the turn's reply (meta ``turn``), so a log line leads to the record.
    id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:16])
    model: str = ""
    #: ok, stopped, interrupted, error, refused, limited; "error" until someone says otherwise.
    status: str = "error"
    started: float = dataclasses.field(default_factory=time.perf_counter)


current_turn: contextvars.ContextVar[TurnInfo | None] = contextvars.ContextVar(
    "fmbot_turn", default=None
)


class Metered:
    """``with Metered(chat, channel):`` around a turn: makes it the current turn and counts how
    it ended and how long it took. Leaving by GeneratorExit or cancellation (the caller stopped
    the turn) is "stopped" unless the turn said otherwise."""

    __slots__ = ("turn",)

    def __init__(self, chat: str, channel: str) -> None:
        self.turn = TurnInfo(chat, channel)

    def __enter__(self) -> TurnInfo:
        current_turn.set(self.turn)
        return self.turn

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        # Not reset with a token: an async generator can be closed from another context, where
        # reset() would raise. The next turn of this task sets its own.
        current_turn.set(None)
        if not _on:
            return
        turn = self.turn
        status = turn.status
        if kind is not None and status == "error" and issubclass(kind, _STOPS):
            status = "stopped"
        TURNS.labels(turn.channel, status).inc()
        TURN_SECONDS.labels(turn.channel).observe(time.perf_counter() - turn.started)


_STOPS = (GeneratorExit, asyncio.CancelledError)


def turn_status(status: str, model: str | None = None) -> None:
    """Say how the current turn ended (and which model answered it)."""
    turn = current_turn.get()
    if turn is not None:
        turn.status = status
        if model is not None:
            turn.model = model


# --- models ---------------------------------------------------------------------------------


def error_kind(exc: ModelError) -> str:
    """A few stable words for a model failure: 429, 5xx, timeout, connect, cut_stream, auth,
    content_filter, context_overflow, unavailable (404 and the like) or other."""
    if isinstance(exc, StreamInterruptedError):
        return "cut_stream"
    cause = exc.__cause__  # bot.models.http raises its errors from the httpx exception
    if isinstance(cause, httpx.TimeoutException):
        return "timeout"
    if isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code >= 500:
        return "5xx"
    if isinstance(cause, httpx.TransportError):
        return "connect"
    for cls, name in _KINDS:
        if isinstance(exc, cls):
            return name
    return "other"


_KINDS: tuple[tuple[type[ModelError], str], ...] = (
    (RateLimitError, "429"),
    (AuthenticationError, "auth"),
    (PermissionDeniedError, "auth"),
    (ContentFilterError, "content_filter"),
    (ContextOverflowError, "context_overflow"),
    (ModelUnavailableError, "unavailable"),
)


def reply_ended(
    model: str,
    status: str,
    *,
    partial: bool,
    started: float,
    first_at: float | None,
    error: ModelError | None,
) -> None:
    """A streamed reply ended as ``status`` (complete, stopped, interrupted; ``partial``: some
    text came): the turn's status, the model call's outcome, its first token and its failure."""
    if status == "complete":
        turn, outcome = "ok", "ok"
    elif error is None:
        turn, outcome = "stopped", "stopped"
    elif isinstance(error, ContentFilterError):
        turn, outcome = "refused", "error"
    else:
        turn, outcome = ("interrupted" if partial else "error"), "error"
    turn_status(turn, model)
    if not _on:
        return
    MODEL_REQUESTS.labels(model, outcome).inc()
    if first_at is not None:
        info = current_turn.get()
        channel = info.channel if info is not None else "other"
        FIRST_TOKEN.labels(channel, model).observe(first_at - started)
    if error is not None:
        MODEL_ERRORS.labels(model, error_kind(error)).inc()


def tokens(model: str, input_tokens: int, output_tokens: int) -> None:
    if not _on:
        return
    MODEL_TOKENS.labels(model, "input").inc(input_tokens)
    MODEL_TOKENS.labels(model, "output").inc(output_tokens)


def image(model: str, error: ModelError | None = None) -> None:
    turn_status("error" if error else "ok", model)
    if not _on:
        return
    IMAGES.labels(model, "error" if error else "ok").inc()
    MODEL_REQUESTS.labels(model, "error" if error else "ok").inc()
    if error is not None:
        MODEL_ERRORS.labels(model, error_kind(error)).inc()


# --- exposition -----------------------------------------------------------------------------


class _WithRole(Collector):
    """The registry's families with ``role`` added to every sample."""

    def __init__(self, role: str) -> None:
        self.role = role

    def collect(self) -> Iterable[Metric]:
        for family in REGISTRY.collect():
            family.samples = list(self._labelled(family.samples))
            yield family

    def _labelled(self, samples: Iterable[Sample]) -> Iterator[Sample]:
        for s in samples:
            yield s._replace(labels={**s.labels, "role": self.role})


def exposition(role: str) -> bytes:
    """This process's metrics in the Prometheus text format."""
    return generate_latest(_WithRole(role))

"""fmbot's Prometheus families and the helpers that count into them.

Counting is off until :func:`enable` (``FMBOT_METRICS_LISTEN`` set): a process that exports
nothing pays only a flag check per helper call. Labels are low-cardinality on purpose: channel,
model, status, outcome, kind — never a chat or user id. The role (ingress, worker, all) is not
a label of the families: :func:`exposition` adds it to every sample of a scrape, so each call
site stays one ``inc()``. The families are plain dictionaries (bot.observe.counters): counting
one turn takes a few microseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import httpx
import redis.exceptions as redis_errors
from prometheus_client import REGISTRY, generate_latest
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
    QuotaExceededError,
    RateLimitError,
    StreamInterruptedError,
)
from bot.events import Message, Usage
from bot.observe import tracing
from bot.observe.counters import Counter, Families, Gauge, Histogram

# Seconds: chat turns run from well under a second (echo, cache hits) to minutes (long replies).
_TURN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
_FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32)

TURNS = Counter("fmbot_turns", "Turns answered, by how they ended.", ["channel", "status"])
TURN_SECONDS = Histogram(
    "fmbot_turn_duration_seconds",
    "From the turn taking its chat's lock to its last event.",
    ["channel"],
    buckets=_TURN_BUCKETS,
)
FIRST_TOKEN = Histogram(
    "fmbot_first_token_seconds",
    "From the model call to its first text.",
    ["channel", "model"],
    buckets=_FIRST_TOKEN_BUCKETS,
)
MODEL_REQUESTS = Counter(
    "fmbot_model_requests", "Model calls of turns, by outcome.", ["model", "outcome"]
)
MODEL_ERRORS = Counter("fmbot_model_errors", "Failed model calls, by kind.", ["model", "kind"])
MODEL_TOKENS = Counter(
    "fmbot_model_tokens",
    "Tokens of stored turns (estimated when the model reports none) and of image prompt "
    "rewrites (as reported).",
    ["model", "direction"],
)
IMAGES = Counter("fmbot_images", "Pictures generated, by outcome.", ["model", "outcome"])

# --- the queue, the ingress, Telegram, Redis (slice 2) ---
QUEUE_ENQUEUED = Counter("fmbot_queue_enqueued", "Jobs added to the queue.")
QUEUE_ACKED = Counter("fmbot_queue_acknowledged", "Jobs acknowledged (finished or buried).")
QUEUE_REDELIVERED = Counter(
    "fmbot_queue_redelivered",
    "Jobs run again: taken over from another worker's pending entries, or retried in place.",
)
QUEUE_DEAD = Counter("fmbot_queue_dead_lettered", "Jobs moved to a dead stream after failing.")
QUEUE_OWNED = Gauge("fmbot_queue_partitions_owned", "Partitions this worker processes.")
QUEUE_LEASE_LOSSES = Counter(
    "fmbot_queue_lease_losses",
    "Partition leases lost: taken by another worker, lapsed, or not renewed in time.",
    ["reason"],
)
QUEUE_PENDING = Gauge(
    "fmbot_queue_pending",
    "Jobs of an owned partition not yet acknowledged (sampled every heartbeat).",
    ["partition"],
)
QUEUE_OLDEST = Gauge(
    "fmbot_queue_oldest_pending_seconds",
    "Age of an owned partition's oldest unacknowledged job, by Redis's clock (sampled).",
    ["partition"],
)
INGRESS_UPDATES = Counter(
    "fmbot_ingress_updates",
    "Updates the ingress received: queued, or duplicate (already queued, dropped).",
    ["outcome"],
)
TELEGRAM_REQUESTS = Counter(
    "fmbot_telegram_requests",
    "Bot API requests by method and outcome (ok, 429, 4xx, 5xx, network).",
    ["method", "outcome"],
)
TELEGRAM_RETRY_AFTER = Counter(
    "fmbot_telegram_retry_after_seconds",
    "Seconds Telegram asked to wait (429 retry_after), by method.",
    ["method"],
)
REDIS_ERRORS = Counter(
    "fmbot_redis_errors",
    "Redis errors the queue waited out or a turn met in the store or limits, by kind "
    "(connection, timeout, readonly, OOM...).",
    ["kind"],
)

FAMILIES: tuple[Counter | Gauge | Histogram, ...] = (
    TURNS,
    TURN_SECONDS,
    FIRST_TOKEN,
    MODEL_REQUESTS,
    MODEL_ERRORS,
    MODEL_TOKENS,
    IMAGES,
    QUEUE_ENQUEUED,
    QUEUE_ACKED,
    QUEUE_REDELIVERED,
    QUEUE_DEAD,
    QUEUE_OWNED,
    QUEUE_LEASE_LOSSES,
    QUEUE_PENDING,
    QUEUE_OLDEST,
    INGRESS_UPDATES,
    TELEGRAM_REQUESTS,
    TELEGRAM_RETRY_AFTER,
    REDIS_ERRORS,
)
# In the default registry, beside prometheus_client's process and garbage-collector metrics.
REGISTRY.register(Families(FAMILIES))

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
    #: OpenTelemetry spans of the turn and of its model call, when tracing is on.
    span: Any = None
    model_span: Any = None
    #: The model's error kind (error_kind) when a model call failed: the turn span's error.type.
    error: str | None = None


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
        if tracing.enabled():
            turn = self.turn
            turn.span = tracing.start_turn(turn.chat, turn.channel, turn.id)
        return self.turn

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        # Not reset with a token: an async generator can be closed from another context, where
        # reset() would raise. The next turn of this task sets its own.
        current_turn.set(None)
        turn = self.turn
        status = turn.status
        if kind is not None and status == "error" and issubclass(kind, _STOPS):
            status = "stopped"
        if turn.span is not None:
            tracing.end_model_call(turn.model_span, None, None)  # if the reply never ended
            error = turn.error  # a model call's error kind wins: it says why the turn failed
            if (
                error is None
                and status == "error"
                and kind is not None
                and issubclass(kind, Exception)
            ):
                error = kind.__name__  # what failed it (StoreError...): the class, no message
            tracing.end_turn(turn.span, status, error)
        if not _on:
            return
        TURNS.inc((turn.channel, status))
        TURN_SECONDS.observe(time.perf_counter() - turn.started, (turn.channel,))


_STOPS = (GeneratorExit, asyncio.CancelledError)


def resume(turn: TurnInfo) -> None:
    """Make ``turn`` current again after a ``yield``: a consumer that steps a turn's generator
    from several tasks (a web server's stream) resumes it each time in that task's context."""
    current_turn.set(turn)


@contextlib.contextmanager
def within(turn: TurnInfo | None) -> Iterator[None]:
    """``with within(turn):`` makes ``turn`` current for the block (its log lines name it), then
    restores what was: for work of a turn done after it ended (a channel delivering its reply,
    reporting that delivery failed). No-op for None."""
    if turn is None:
        yield
        return
    token = current_turn.set(turn)
    try:
        yield
    finally:
        current_turn.reset(token)


def turn_status(status: str, model: str | None = None) -> None:
    """Say how the current turn ended (and which model answered it)."""
    turn = current_turn.get()
    if turn is not None:
        turn.status = status
        if model is not None:
            turn.model = model


class _Step:
    """The span of one step of the current turn, while the block runs."""

    __slots__ = ("span",)

    def __init__(self, span: Any) -> None:
        self.span = span

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None and not issubclass(kind, _STOPS):
            tracing.failed(self.span, kind.__name__)
        self.span.end()


_NO_STEP = contextlib.nullcontext()


def step(name: str) -> contextlib.AbstractContextManager[None]:
    """``with step("fmbot history read"):`` a child span of the current turn when tracing."""
    turn = current_turn.get()
    if turn is None or turn.span is None:
        return _NO_STEP
    return _Step(tracing.start_child(turn.span, name))


def turn_model(model: str, messages: Sequence[Message] = (), operation: str = "chat") -> None:
    """The current turn calls ``model`` now, with ``messages`` (log lines name the model; traces
    get its span, with the messages if content is captured). ``operation``: the GenAI one."""
    turn = current_turn.get()
    if turn is not None:
        turn.model = model
        if turn.span is not None:
            prompt = ((m.role, m.text) for m in messages)
            turn.model_span = tracing.start_model_call(
                turn.span, model, turn.chat, prompt, operation=operation
            )


# --- models ---------------------------------------------------------------------------------


def error_kind(exc: ModelError) -> str:
    """A few stable words for a model failure: 429, quota, 5xx, timeout, connect, cut_stream,
    auth, content_filter, context_overflow, unavailable (404 and the like) or other."""
    if isinstance(exc, StreamInterruptedError):
        return "cut_stream"
    if isinstance(exc, QuotaExceededError):  # a 429 too, but one only paying fixes
        return "quota"
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
    usage: Usage | None = None,
    text: str | None = None,
) -> None:
    """A streamed reply ended as ``status`` (complete, stopped, interrupted; ``partial``: some
    text came): the turn's status, the model call's outcome, its first token and its failure.
    ``text``: the reply, for traces that capture content."""
    if status == "complete":
        turn, outcome = "ok", "ok"
    elif error is None:
        turn, outcome = "stopped", "stopped"
    elif isinstance(error, ContentFilterError):
        turn, outcome = "refused", "error"
    else:
        turn, outcome = ("interrupted" if partial else "error"), "error"
    turn_status(turn, model)
    info = current_turn.get()
    kind = error_kind(error) if error else None
    if info is not None and info.span is not None:
        info.error = kind
        tracing.end_model_call(info.model_span, usage, kind, status=turn, text=text)
        info.model_span = None
    if not _on:
        return
    MODEL_REQUESTS.inc((model, outcome))
    if first_at is not None:
        channel = info.channel if info is not None else "other"
        FIRST_TOKEN.observe(first_at - started, (channel, model))
    if error is not None:
        MODEL_ERRORS.inc((model, error_kind(error)))


def tokens(model: str, input_tokens: int, output_tokens: int) -> None:
    if not _on:
        return
    MODEL_TOKENS.inc((model, "input"), input_tokens)
    MODEL_TOKENS.inc((model, "output"), output_tokens)


def image(model: str, error: ModelError | None = None) -> None:
    """A picture was generated (or failed): the turn's status, its model span (turn_model)."""
    status = "error" if error else "ok"
    turn_status(status, model)
    info = current_turn.get()
    if info is not None and info.span is not None:
        info.error = error_kind(error) if error else None
        tracing.end_model_call(info.model_span, None, info.error, status=status)
        info.model_span = None
    if not _on:
        return
    IMAGES.inc((model, status))
    MODEL_REQUESTS.inc((model, status))
    if error is not None:
        MODEL_ERRORS.inc((model, error_kind(error)))


class Reply(Protocol):
    """What a model call's reply tells once read: bot.models.base.Response (a layer above)."""

    @property
    def usage(self) -> Usage | None: ...

    @property
    def text(self) -> str: ...


class ModelCall:
    """``with ModelCall(model, messages, response): await response`` — a model call of the
    current turn besides the one that answers it (an image turn's prompt rewrite): counted
    (requests by outcome, errors by kind, the tokens the model reports) and traced (a ``chat``
    span under the turn) like that one, while the turn's status stays the answer's. A ModelError
    leaving the block is its failure; leaving by cancellation, it was stopped."""

    __slots__ = ("messages", "model", "response", "span")

    def __init__(self, model: str, messages: Sequence[Message], response: Reply) -> None:
        self.model = model
        self.messages = messages
        self.response = response
        self.span: Any = None

    def __enter__(self) -> None:
        turn = current_turn.get()
        if turn is not None:
            turn.model = model = self.model  # log lines name it meanwhile
            if turn.span is not None:
                prompt = ((m.role, m.text) for m in self.messages)
                self.span = tracing.start_model_call(turn.span, model, turn.chat, prompt)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        if kind is None:
            outcome, error = "ok", None
        elif issubclass(kind, _STOPS):
            outcome, error = "stopped", None
        else:  # a model raises ModelErrors only; anything else is "other"
            outcome = "error"
            error = error_kind(exc) if isinstance(exc, ModelError) else "other"
        usage = self.response.usage
        tracing.end_model_call(self.span, usage, error, status=outcome, text=self.response.text)
        if not _on:
            return
        MODEL_REQUESTS.inc((self.model, outcome))
        if error is not None:
            MODEL_ERRORS.inc((self.model, error))
        if usage is not None:  # as reported: the estimate a turn charges without it is no measure
            tokens(self.model, usage.input_tokens, usage.output_tokens)


# --- the queue, the ingress, Telegram, Redis -------------------------------------------------


def count(counter: Counter, amount: float = 1, *labels: str) -> None:
    """``counter.inc(labels, amount)`` while metrics are on."""
    if _on:
        counter.inc(labels, amount)


def owned_partitions(n: int) -> None:
    if _on:
        QUEUE_OWNED.set(n)


def backlog(partition: int, pending: int, oldest_seconds: float) -> None:
    if _on:
        QUEUE_PENDING.set(pending, (str(partition),))
        QUEUE_OLDEST.set(oldest_seconds, (str(partition),))


def forget_partition(partition: int) -> None:
    """A partition no longer ours: its gauges go, rather than freeze at their last value."""
    for gauge in (QUEUE_PENDING, QUEUE_OLDEST):
        gauge.remove((str(partition),))


_REDIS_REPLIES = ("OOM", "MISCONF", "NOPERM", "WRONGTYPE", "CLUSTERDOWN", "TRYAGAIN", "NOSCRIPT")


def redis_error_kind(exc: BaseException) -> str:
    """connection, timeout, readonly, loading, an error reply's code (OOM, MISCONF, NOPERM,
    WRONGTYPE, CLUSTERDOWN, TRYAGAIN), response (another reply) or other."""
    if isinstance(exc.__cause__, redis_errors.RedisError | OSError):
        exc = exc.__cause__  # a StoreError wrapping the client's error
    if isinstance(exc, redis_errors.TimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, redis_errors.ReadOnlyError):
        return "readonly"
    if isinstance(exc, redis_errors.BusyLoadingError):
        return "loading"
    if isinstance(exc, redis_errors.ConnectionError | OSError):
        return "connection"
    if isinstance(exc, redis_errors.ResponseError):
        code = str(exc).split(" ", 1)[0].upper()
        return code.lower() if code in _REDIS_REPLIES else "response"
    return "other"


def redis_error(exc: BaseException) -> None:
    if _on:
        REDIS_ERRORS.inc((redis_error_kind(exc),))


# redis-py's error classes (bot.redis.REDIS_ERRORS is in a layer above bot.observe).
_REDIS_CAUSES = (redis_errors.RedisError, redis_errors.RedisClusterException)


def store_error(exc: BaseException) -> None:
    """A StoreError the dialog manager answered itself (a notice, a reply not saved). Only
    there: one it raises goes to the queue's retry loop, which counts it (bot.queue.backoff),
    or is a job given up with its partition (a lease loss). Counted when Redis's client caused
    it: a SQLite store's failures are not Redis errors."""
    if _on and isinstance(exc.__cause__, _REDIS_CAUSES):
        REDIS_ERRORS.inc((redis_error_kind(exc),))


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

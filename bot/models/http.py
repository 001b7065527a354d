"""HTTP plumbing shared by the remote backends (Yandex Cloud, OpenAI-compatible servers).

Three things live here so both backends behave the same way:

* :func:`create_client` - an ``httpx.AsyncClient`` with explicit timeouts and a connection cap;
* :func:`send` - one request with retries (tenacity): 429, 5xx and failures to connect are retried
  with exponential backoff and jitter, honouring ``Retry-After``; anything else is final, and so
  are quota/billing refusals and the statuses after which a generation may be running (see
  :data:`RequestKind`);
* the mapping of HTTP statuses and httpx exceptions to :mod:`bot.errors` classes, with messages
  written for the person chatting and never containing a key or token.

Errors are logged with the ``x-client-request-id`` we sent, which is what support asks for.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from pydantic import SecretStr
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
)

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

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-client-request-id"
USER_AGENT = "fmbot/0.1 (+httpx)"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds. ``read`` is the longest silence between bytes, not the whole reply's time."""

    connect: float = 10.0
    read: float = 90.0
    write: float = 30.0
    pool: float = 30.0

    def to_httpx(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=self.pool)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How :func:`send` retries. Tests shrink the waits; production keeps the defaults."""

    attempts: int = 4
    initial_wait: float = 1.0
    max_wait: float = 20.0
    jitter: float = 1.0
    #: A ``Retry-After`` longer than this is not worth waiting for in a chat: fail instead.
    max_retry_after: float = 60.0


@dataclass(frozen=True, slots=True)
class Service:
    """Who we talk to, and what to tell the user when it fails.

    The ``*_message`` fields are whole sentences naming the setting to fix. ``secrets`` are
    scrubbed from any server text we pass on (servers sometimes echo a masked or even a whole
    key); they are excluded from ``repr`` so the object can be logged.
    """

    name: str  # "Yandex Cloud", "the OpenAI-compatible server at api.openai.com"
    auth_message: str  # 401, e.g. "Yandex Cloud rejected the API key: check YANDEX_API_KEY."
    permission_message: str  # 403: roles, folder, quota
    model_message: str = "The service does not know this model: check the model name."  # 404
    #: What to check when the account is out of credit or over a spend limit (insufficient_quota).
    quota_message: str = "Check the billing and spend limits of the account behind the key."
    secrets: tuple[SecretStr, ...] = field(default=(), repr=False)

    @property
    def title(self) -> str:
        """The name capitalised for the start of a sentence."""
        return self.name[:1].upper() + self.name[1:]

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            value = secret.get_secret_value()
            if len(value) >= 4:
                text = text.replace(value, "****")
        return text


def create_client(
    base_url: str = "",
    *,
    timeouts: Timeouts | None = None,
    max_connections: int = 10,
) -> httpx.AsyncClient:
    """A client with explicit timeouts and a connection cap.

    The cap matches the services' default concurrency quota (Yandex: 10 simultaneous synchronous
    generations per cloud), so a busy bot queues locally instead of collecting 429s.
    """
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=(timeouts or Timeouts()).to_httpx(),
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        headers={"User-Agent": USER_AGENT},
    )


def new_request_id() -> str:
    return str(uuid.uuid4())


# --- retries -------------------------------------------------------------------------------------

#: What a request does, which decides what is safe to send again:
#:
#: * ``read`` - reads, polls, tokenizing, embeddings: repeating them costs nothing (or next to
#:   nothing), so 429, every 5xx and failures to connect are retried;
#: * ``generate`` - a POST that runs a billed generation and answers with it (Yandex
#:   ``completion``, OpenAI ``chat/completions`` and ``images/generations``): as ``read`` but 504 is
#:   final. A gateway timeout means a proxy stopped waiting, not that the model stopped: it may
#:   still be generating (and billing) upstream, and a retry would run it twice;
#: * ``submit`` - a POST that creates an asynchronous operation (``completionAsync``,
#:   ``imageGenerationAsync``): only 429, 503 and failures to connect are retried, the answers
#:   that say the request was turned away before any work. After any other 5xx, or a connection
#:   dropped without an answer, the operation may exist already; its id is lost with the
#:   response, and a retry would start (and bill) a second one nobody polls.
RequestKind = Literal["read", "generate", "submit"]


class _Retryable(Exception):
    """Internal: a failure worth another attempt. ``error`` is what to raise if none is left."""

    def __init__(self, error: ModelError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class _Wait:
    """Exponential backoff with jitter, unless the server said how long (``Retry-After``).

    Written out rather than tenacity's ``wait_exponential_jitter``, whose parameter names differ
    between the tenacity versions we allow.
    """

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            return exc.retry_after
        p = self._policy
        backoff = min(p.max_wait, p.initial_wait * 2.0 ** (state.attempt_number - 1))
        return backoff + random.uniform(0, p.jitter)  # jitter spreads out clients retrying at once


async def send(
    client: httpx.AsyncClient,
    request: httpx.Request,
    service: Service,
    *,
    policy: RetryPolicy | None = None,
    stream: bool = False,
    kind: RequestKind = "read",
) -> httpx.Response:
    """Send ``request``, retrying transient failures; return a 2xx response or raise ModelError.

    With ``stream=True`` the body is not read: the caller must ``aclose()`` the response. The
    request body must be bytes (it is sent again on retries). ``kind`` says which failures are
    safe to retry (:data:`RequestKind`).
    """
    policy = policy or RetryPolicy()
    request_id = request.headers.get(REQUEST_ID_HEADER, "-")

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "%s %s failed (attempt %d of %d, request id %s): %s Retrying in %.1f s.",
            request.method,
            request.url.path,
            state.attempt_number,
            policy.attempts,
            request_id,
            exc,
            wait,
        )

    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.attempts),
        wait=_Wait(policy),
        retry=retry_if_exception_type(_Retryable),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                return await _send_once(client, request, service, policy, stream=stream, kind=kind)
    except _Retryable as exc:
        log.error(
            "%s %s failed after %s (request id %s): %s",
            request.method,
            request.url.path,
            _attempts(policy.attempts),
            request_id,
            exc.error,
        )
        final = exc.error
        if isinstance(final, RateLimitError):
            final = RateLimitError(
                f"{service.title} is limiting requests (429 Too Many Requests) and still was after "
                f"{_attempts(policy.attempts)}. Please wait a minute and try again; if it keeps "
                "happening, the quota may need raising."
            )
        elif isinstance(final, ModelUnavailableError):
            tried = "once" if policy.attempts == 1 else f"{policy.attempts} times"
            final = ModelUnavailableError(f"{final} (Tried {tried}.)")
        raise final from exc.__cause__
    except ModelError as exc:
        log.error(
            "%s %s failed (request id %s): %s", request.method, request.url.path, request_id, exc
        )
        raise
    raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover


async def _send_once(
    client: httpx.AsyncClient,
    request: httpx.Request,
    service: Service,
    policy: RetryPolicy,
    *,
    stream: bool,
    kind: RequestKind,
) -> httpx.Response:
    try:
        response = await client.send(request, stream=stream)
    except httpx.HTTPError as exc:
        error = transport_error(exc, service, request)
        # Failing to connect is safe to repeat: the server never saw the request. A read timeout
        # is not: the generation may be running, and repeating it doubles the wait and the bill.
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
            raise _Retryable(error) from exc
        # Closed before any response: usually a kept-alive connection the server had dropped,
        # but the request may have arrived, so not for a submit (see RequestKind).
        if isinstance(exc, httpx.RemoteProtocolError) and kind != "submit":
            raise _Retryable(error) from exc
        raise error from exc
    if response.is_success:
        return response
    try:
        await response.aread()
    except httpx.HTTPError:
        pass  # the status alone is enough to map the error
    finally:
        await response.aclose()
    status_exc = httpx.HTTPStatusError(
        f"HTTP {response.status_code}", request=request, response=response
    )
    error = error_from_response(response, service)
    # The body first: a quota/billing 429 comes back the same until someone pays.
    if not isinstance(error, QuotaExceededError) and _retryable(response.status_code, kind):
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if retry_after is not None and retry_after > policy.max_retry_after:
            raise error from status_exc  # not worth holding the chat for that long
        raise _Retryable(error, retry_after) from status_exc
    raise error from status_exc


def _retryable(status: int, kind: RequestKind) -> bool:
    """Whether an HTTP error status is worth another attempt for this kind of request."""
    if status == 429:
        return True
    if kind == "submit":
        return status == 503
    if kind == "generate" and status == 504:
        return False
    return status >= 500


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# --- error mapping -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """What a server said about an error, from any of the JSON shapes we know."""

    message: str = ""
    code: str = ""  # OpenAI "code"/"type" or the gRPC code as text
    type: str = ""  # OpenAI "type" ("server_error", "insufficient_quota", ...)
    #: An HTTP status given as a number in ``code`` (llama.cpp, vLLM and others put one there,
    #: notably in errors sent inside a stream); None if there is none.
    status: int | None = None


def parse_error_body(response: httpx.Response) -> ErrorBody:
    """Parse Yandex ``{"error": {"grpcCode", "message"}}``, generic gRPC ``{"code", "message"}``
    and OpenAI ``{"error": {"message", "type", "code"}}``; fall back to the text."""
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, httpx.ResponseNotRead):
        try:
            text = response.text
        except httpx.ResponseNotRead:
            text = ""
        return ErrorBody(message=text.strip()[:300])
    return error_body_from_json(body)


def error_body_from_json(body: Any) -> ErrorBody:
    if not isinstance(body, Mapping):
        return ErrorBody(message=str(body)[:300])
    inner = body.get("error")
    if isinstance(inner, str):
        return ErrorBody(message=inner)
    if isinstance(inner, Mapping):
        body = inner
    code = body.get("grpcCode", body.get("code") or body.get("type") or "")
    kind = body.get("type")
    number = body.get("code")
    status = number if type(number) is int and 400 <= number <= 599 else None
    return ErrorBody(
        message=str(body.get("message") or "")[:500],
        code=str(code),
        type=kind if isinstance(kind, str) else "",
        status=status,
    )


_CONTEXT_PATTERNS = (
    # Yandex: "Number of input tokens must be no more than 32768, got 40000"
    re.compile(r"no more than (?P<available>\d+), got (?P<needed>\d+)"),
    # OpenAI: "maximum context length is 8192 tokens. However, your messages resulted in 9000"
    re.compile(
        r"maximum context length is (?P<available>\d+) tokens.*?(?P<needed>\d+) tokens", re.S
    ),
    # llama-server: "request (4476 tokens) exceeds the available context size (4096 tokens),
    # try increasing it"; later builds drop "the available"; earlier ones said "input (N
    # tokens) is larger than the max context size (M tokens). skipping".
    re.compile(
        r"(?:request|input) \((?P<needed>\d+) tokens\) (?:exceeds|is larger than) (?:the "
        r"available |the max )?context size \((?P<available>\d+) tokens\)"
    ),
)
#: llama-server before it gave the numbers: "the request exceeds the available context size,
#: try increasing it".
_CONTEXT_WITHOUT_NUMBERS = "exceeds the available context size"
_CONTENT_FILTER_CODES = {"content_filter", "content_policy_violation"}
#: OpenAI's codes for an account out of credit or over a limit, whatever the status (429, and
#: 400 for billing_hard_limit_reached from the images endpoint); "type" may be
#: "insufficient_quota" with a more specific "code". Retrying them never helps (OpenAI's error
#: codes guide; help.openai.com "Troubleshooting API usage and spend limits").
_QUOTA_CODES = {
    "insufficient_quota": "the account's quota is used up",
    "credit_balance_exhausted": "the account has no prepaid credit left",
    "organization_spend_limit_exceeded": "the organization reached its spend limit",
    "project_spend_limit_exceeded": "the project reached its spend limit",
    "organization_usage_limit_exceeded": "the organization reached its approved usage limit",
    "billing_hard_limit_reached": "the account reached its billing hard limit",
    "billing_not_active": "the account's billing is not active",
}
#: Statuses for errors that name their kind without a number (inside a stream, mostly).
_STATUS_OF_CODE = {
    "rate_limit_exceeded": 429,
    "slow_down": 429,
    "server_error": 500,
    "server_is_overloaded": 503,
    "service_unavailable": 503,
}


def error_from_response(response: httpx.Response, service: Service) -> ModelError:
    """The ModelError for a non-2xx response (the body must have been read)."""
    body = parse_error_body(response)
    return error_for_status(
        response.status_code, body.message, body.code, service, error_type=body.type
    )


def quota_error(code: str, error_type: str, service: Service) -> QuotaExceededError | None:
    """The error for an account out of credit or over a limit, if ``code``/``type`` say so."""
    name = code if code in _QUOTA_CODES else error_type if error_type in _QUOTA_CODES else ""
    if not name:
        return None
    return QuotaExceededError(
        f"{service.title} refused the request: {_QUOTA_CODES[name]} ({name}). Waiting will not "
        f"help. {service.quota_message}"
    )


def error_for_status(
    status: int, message: str, code: str, service: Service, *, error_type: str = ""
) -> ModelError:
    """The ModelError for an HTTP status (or a gRPC code translated to one) and server text."""
    detail = service.scrub(message)
    quota = quota_error(code, error_type, service)
    if quota is not None and status != 401:
        return quota
    if status == 401:
        return AuthenticationError(service.auth_message)
    if status == 403:
        return PermissionDeniedError(service.permission_message)
    if status == 429:
        return RateLimitError(f"{service.title} is limiting requests (429 Too Many Requests).")
    if status >= 500:
        return ModelUnavailableError(
            f"{service.title} is having trouble (HTTP {status}"
            + (f": {detail}" if detail else "")
            + "). Please try again in a few minutes."
        )
    if status == 404:
        return ModelUnavailableError(service.model_message)
    return error_from_detail(service, detail, code, f"HTTP {status}")


def error_from_detail(service: Service, detail: str, code: str, what: str) -> ModelError:
    """Map a 4xx or operation error message to the most specific ModelError."""
    detail = service.scrub(detail)
    for pattern in _CONTEXT_PATTERNS:
        match = pattern.search(detail)
        if match:
            return ContextOverflowError(int(match["needed"]), int(match["available"]))
    if _CONTEXT_WITHOUT_NUMBERS in detail:
        return ContextOverflowError(None, None)
    lowered = detail.lower()
    if code in _CONTENT_FILTER_CODES or any(
        word in lowered for word in ("content filter", "violate", "terms of use", "ethic")
    ):
        return ContentFilterError(
            f"{service.title} refused this request under its content rules. Please rephrase it."
        )
    return ModelError(
        f"{service.title} rejected the request ({what}" + (f": {detail}" if detail else "") + ")."
    )


def error_from_event(service: Service, body: ErrorBody) -> ModelError:
    """The ModelError for an error a server sent inside a stream that began with 200 (an SSE
    ``data: {"error": {...}}``): mapped like the HTTP status it names, as a number in ``code``
    or by a known ``code``/``type``, else by its text. Never retried: the reply was under way."""
    status = body.status or _STATUS_OF_CODE.get(body.code) or _STATUS_OF_CODE.get(body.type)
    quota = quota_error(body.code, body.type, service)
    if quota is not None:
        return quota
    if status is None:
        return error_from_detail(service, body.message, body.code, "in stream")
    error = error_for_status(status, body.message, body.code, service, error_type=body.type)
    if isinstance(error, RateLimitError):
        return RateLimitError(f"{error} Please wait a minute and try again.")
    return error


def transport_error(exc: httpx.HTTPError, service: Service, request: httpx.Request) -> ModelError:
    """The ModelError for a failure below HTTP (no usable response)."""
    host = request.url.host
    where = service.name if host in service.name else f"{service.name} at {host}"
    if isinstance(exc, httpx.TimeoutException):
        kind = {
            httpx.ConnectTimeout: "timed out connecting",
            httpx.ReadTimeout: "timeout: no answer in time",
            httpx.WriteTimeout: "timeout while sending",
            httpx.PoolTimeout: "timeout: too many requests in flight",
        }.get(type(exc), "timeout")
        return ModelUnavailableError(
            f"Could not reach {where} ({kind}). Check the network, or try again later."
        )
    if isinstance(exc, httpx.ConnectError):
        return ModelUnavailableError(
            f"Could not reach {where} (connection failed). Check the network and the service "
            "address, or try again later."
        )
    return ModelUnavailableError(
        f"Could not reach {where} ({type(exc).__name__}). Please try again later."
    )


def stream_error(exc: httpx.HTTPError, service: Service, partial: str) -> StreamInterruptedError:
    """The error for a failure after the reply started: keep what arrived."""
    reason = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection lost"
    return StreamInterruptedError(
        f"The reply from {service.name} was cut off ({reason}); what arrived is shown. "
        "Please ask again to get the full answer.",
        partial=partial,
    )


def json_request(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    body: Any | None = None,
) -> httpx.Request:
    """A request with a JSON body encoded once (so retries resend the same bytes)."""
    content = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
    all_headers = dict(headers)
    if content is not None:
        all_headers["Content-Type"] = "application/json"
    return client.build_request(method, url, headers=all_headers, content=content)


async def send_json(
    client: httpx.AsyncClient,
    request: httpx.Request,
    service: Service,
    *,
    policy: RetryPolicy | None = None,
    kind: RequestKind = "read",
) -> Any:
    """:func:`send`, then decode the JSON body (a bad body is a ModelError too)."""
    response = await send(client, request, service, policy=policy, kind=kind)
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        log.error(
            "%s %s: response is not JSON (request id %s)",
            request.method,
            request.url.path,
            request.headers.get(REQUEST_ID_HEADER, "-"),
        )
        raise ModelError(f"{service.title} sent a response fmbot cannot read.") from exc


def _attempts(n: int) -> str:
    return "1 attempt" if n == 1 else f"{n} attempts"

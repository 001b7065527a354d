"""What the fake servers share: serving aiohttp apps on 127.0.0.1, recording requests, faults.

A test injects faults before making a call::

    fake.inject(Fault("status", status=429, retry_after=1.0), times=1)
    fake.inject(Fault("cut", after=2), path="/completion")
    fake.inject(Fault("status", status=429, code="insufficient_quota"))  # OpenAI's error.code
    fake.inject(Fault("error_event", after=2, error_type="server_error", code=503))

Each fault applies to the next ``times`` requests whose path ends with ``path`` (any path if None).
Status faults and hangs are answered by a middleware; stream faults (``cut``,
``content_filter``, ``error_event``: an OpenAI-style ``data: {"error": {...}}`` event, then the
end of the body) and ``operation_error`` are carried out by the endpoint that streams or creates
operations.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

FaultKind = Literal["status", "hang", "cut", "content_filter", "error_event", "operation_error"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Fault:
    kind: FaultKind
    status: int = 500
    retry_after: float | None = None  # seconds, sent as a Retry-After header
    seconds: float = 30.0  # how long a hang lasts (ends early when the server stops)
    after: int = 1  # stream lines/events sent before a cut or a content filter
    abrupt: bool = True  # cut: drop the connection (True) or end the body cleanly (False)
    grpc_code: int = 13  # operation_error
    message: str = "Internal error"
    #: OpenAI-shaped errors (status faults, error_event): ``error.code`` and ``error.type``;
    #: None takes the defaults for ``status``. A number in ``code`` is what llama.cpp and vLLM
    #: send; OpenAI sends a string or null.
    code: str | int | None = None
    error_type: str | None = None


@dataclass
class Recorded:
    """One request as the fake saw it. ``headers`` keys are lower case."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float  # time.monotonic() when it arrived


@dataclass
class _Pending:
    fault: Fault
    times: int
    path: str | None


@dataclass
class FakeServer:
    """Base class: subclasses build their apps in :meth:`apps` and format errors."""

    requests: list[Recorded] = field(default_factory=list)
    #: Set when a client dropped a connection while we were streaming to it.
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    stream_delay: float = 0.0  # pause between streamed lines, to let tests cancel mid-way
    _faults: list[_Pending] = field(default_factory=list)
    _runners: list[web.AppRunner] = field(default_factory=list)
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    # Per-request (JSON body, fault), keyed by id(request) while the handler runs.
    _context: dict[int, tuple[Any, Fault | None]] = field(default_factory=dict)

    # --- for tests ---

    def inject(self, fault: Fault, *, times: int = 1, path: str | None = None) -> None:
        self._faults.append(_Pending(fault, times, path))

    def requests_to(self, suffix: str) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith(suffix)]

    async def wait_for_request(
        self, predicate: Callable[[Recorded], bool], within: float = 2.0
    ) -> Recorded:
        """The first recorded request matching ``predicate``, waiting for it if need be."""
        async with asyncio.timeout(within):
            while True:
                for recorded in self.requests:
                    if predicate(recorded):
                        return recorded
                self._arrived.clear()
                await self._arrived.wait()

    async def __aenter__(self) -> FakeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- plumbing ---

    async def serve(self, app: web.Application) -> str:
        """Serve ``app`` on a free port of 127.0.0.1; return its base URL."""
        app.middlewares.append(self._middleware)
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True
        )
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(runner, sock)
        await site.start()
        self._runners.append(runner)
        port = sock.getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        self._closing.set()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    def error_response(
        self, request: web.Request, status: int, message: str, headers: dict[str, str] | None = None
    ) -> web.Response:
        raise NotImplementedError

    def fault_response(
        self, request: web.Request, fault: Fault, headers: dict[str, str]
    ) -> web.Response:
        """The answer to a status fault; fakes whose errors carry codes override it."""
        return self.error_response(request, fault.status, fault.message, headers)

    def body_of(self, request: web.Request) -> Any:
        """The request's decoded JSON body (None if empty)."""
        return self._context[id(request)][0]

    def fault_of(self, request: web.Request) -> Fault | None:
        """The fault injected for this request, if any (status and hang faults never get here)."""
        return self._context[id(request)][1]

    def _take_fault(self, path: str) -> Fault | None:
        for pending in self._faults:
            if pending.path is None or path.endswith(pending.path):
                pending.times -= 1
                if pending.times <= 0:
                    self._faults.remove(pending)
                return pending.fault
        return None

    def _record(self, request: web.Request, body: Any) -> None:
        """Remember a request for the test's assertions and wake ``wait_for_request``."""
        self.requests.append(
            Recorded(
                method=request.method,
                path=request.path,
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
                at=time.monotonic(),
            )
        )
        self._arrived.set()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self._record(request, body)
        fault = self._take_fault(request.path)
        if fault is not None and fault.kind == "status":
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = f"{fault.retry_after:g}"
            return self.fault_response(request, fault, headers)
        if fault is not None and fault.kind == "hang":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), fault.seconds)
            return self.error_response(request, 504, "Deadline exceeded")
        self._context[id(request)] = (body, fault)
        try:
            return await handler(request)
        finally:
            del self._context[id(request)]

    async def write_line(
        self, request: web.Request, response: web.StreamResponse, data: bytes
    ) -> bool:
        """Write one streamed piece; False (and ``disconnected`` set) if the client has gone."""
        transport = request.transport
        if transport is None or transport.is_closing():
            self.disconnected.set()
            return False
        try:
            await response.write(data)
            if self.stream_delay:
                await asyncio.sleep(self.stream_delay)
        except ConnectionError:
            self.disconnected.set()
            return False
        except asyncio.CancelledError:  # aiohttp cancels the handler when the client goes away
            self.disconnected.set()
            raise
        return True

    async def cut(self, request: web.Request, response: web.StreamResponse, fault: Fault) -> None:
        """End a stream early: drop the connection, or finish the body as if it were complete."""
        if fault.abrupt:
            if request.transport is not None:
                request.transport.close()
        else:
            await response.write_eof()


def words(text: str) -> list[str]:
    """The fakes' tokenizer: whitespace-separated words."""
    return text.split()


@contextlib.asynccontextmanager
async def no_implicit_generator_cleanup() -> AsyncIterator[None]:
    """Make async generators that nobody closes stay open, instead of being closed by the
    event loop's garbage-collection hook.

    CPython usually closes a dropped generator chain within a millisecond, which would hide a
    backend that forgets to close its HTTP stream; on other runtimes, or with a reference cycle,
    that stream would stay open. Inside this block only explicit closing counts.
    """
    hooks = sys.get_asyncgen_hooks()
    leaked: list[Any] = []
    sys.set_asyncgen_hooks(firstiter=hooks.firstiter, finalizer=leaked.append)
    try:
        yield
    finally:
        sys.set_asyncgen_hooks(*hooks)
        for generator in leaked:
            await generator.aclose()

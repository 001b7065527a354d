"""``GET /metrics`` on ``FMBOT_METRICS_LISTEN``: a small asyncio HTTP server in the bot's loop.

prometheus_client's own server runs in a thread; this one stays on the event loop the process
already runs and needs no extra dependency. It answers one request per connection (Prometheus
opens a new one per scrape or reuses it; ``Connection: close`` keeps it simple) and gives a
slow or silent client :data:`READ_TIMEOUT` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from prometheus_client import CONTENT_TYPE_LATEST

from bot.errors import ConfigError
from bot.observe import metrics, tracing
from bot.urls import parse_listen

log = logging.getLogger(__name__)

READ_TIMEOUT = 10.0  # s for a client to send its request line and headers
MAX_HEADER_BYTES = 16_384


def parse_metrics_listen(value: str) -> tuple[str, int]:
    return parse_listen(value, "FMBOT_METRICS_LISTEN", "0.0.0.0:9100")


async def _answer(role: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEADER_BYTES:
            raise ValueError("headers too long")
        method, path, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if method not in ("GET", "HEAD"):
            status, body, kind = "405 Method Not Allowed", b"GET /metrics\n", "text/plain"
        elif path.split("?", 1)[0] != "/metrics":
            status, body, kind = "404 Not Found", b"GET /metrics\n", "text/plain"
        else:
            status, body, kind = "200 OK", metrics.exposition(role), CONTENT_TYPE_LATEST
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode("latin-1")
        )
        if method != "HEAD":
            writer.write(body)
        async with asyncio.timeout(READ_TIMEOUT):
            await writer.drain()
    except (
        TimeoutError,
        ValueError,
        ConnectionError,
        asyncio.IncompleteReadError,
        asyncio.LimitOverrunError,
    ):
        pass  # a client that went away or spoke something else: nothing to answer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(READ_TIMEOUT):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def serving(listen: str | None, role: str) -> AsyncIterator[None]:
    """Count and serve metrics while the block runs, when ``listen`` (HOST:PORT) is given;
    export traces when an OTLP endpoint is configured (bot/observe/tracing.py)."""
    stop_tracing = tracing.setup(role)
    try:
        if not listen:
            yield
            return
        async with _metrics_served(listen, role):
            yield
    finally:
        if stop_tracing is not None:
            # Flushing posts to the collector from a thread: the loop keeps running meanwhile.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(READ_TIMEOUT + 5):
                    await asyncio.to_thread(stop_tracing)


@contextlib.asynccontextmanager
async def _metrics_served(listen: str, role: str) -> AsyncIterator[None]:
    host, port = parse_metrics_listen(listen)
    try:
        server = await asyncio.start_server(
            lambda r, w: _answer(role, r, w), host, port, limit=MAX_HEADER_BYTES
        )
    except OSError as exc:  # in use, or not an address of this machine
        raise ConfigError(
            "FMBOT_METRICS_LISTEN", listen, f"cannot listen there ({exc.strerror or exc})"
        ) from None
    metrics.enable()
    log.info("metrics on http://%s:%d/metrics (role %s)", host, port, role)
    try:
        yield
    finally:
        metrics.enable(False)
        server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(READ_TIMEOUT):
                await server.wait_closed()

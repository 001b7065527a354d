"""``fmbot web``: the dialog manager and the app on uvicorn, and a shutdown that closes both.

SIGINT or SIGTERM stops accepting and stops the chat replies under way: each is stored as stopped
and its stream ends with a notice and ``final``. Other requests (playground runs) get a few
seconds, then are cancelled. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Iterator

import uvicorn

from adapters.web.app import create_app
from adapters.web.runs import build_offered
from adapters.web.settings import WebSettings
from bot.errors import ConfigError
from bot.observe import logs
from bot.observe.server import serving as metrics_served
from bot.settings import Settings

log = logging.getLogger(__name__)

GRACE = 5  # s other requests in progress get to finish after a stop signal


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, closing: asyncio.Event) -> None:
        super().__init__(config)
        self.closing = closing

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Ours, not uvicorn's: uvicorn re-raises the signal once it has stopped, which for
        SIGTERM would end the process before the store is closed."""
        loop = asyncio.get_running_loop()

        def stop() -> None:
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True
            self.closing.set()  # replies under way stop, so their connections can close

        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop)
                installed.append(sig)
        try:
            yield
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)


async def run_web(settings: Settings, web: WebSettings, host: str, port: int) -> None:
    async with metrics_served(settings.metrics_listen, "web"):  # its own port
        await _run(settings, web, host, port)


async def _run(settings: Settings, web: WebSettings, host: str, port: int) -> None:
    from bot.app import build_manager
    from bot.models.registry import close_models

    manager = await build_manager(settings)
    manager.channel = "web"
    try:
        await build_offered(settings, web.models)  # ConfigError: a model it cannot offer
        closing = asyncio.Event()
        config = uvicorn.Config(
            create_app(manager, settings, web, closing),
            host=host,
            port=port,
            access_log=False,  # request lines are not worth a line each; errors still are
            log_config=None,  # fmbot's own logging (adapters/cli/main.py)
            lifespan="off",
            timeout_graceful_shutdown=GRACE,
        )
        sock = listening_socket(host, port)
        shown = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        if logs.current_format() == "json":  # stderr holds JSON lines only
            log.info("serving on %s", shown)
        else:
            print(f"fmbot web on {shown} (Ctrl-C stops)", file=sys.stderr, flush=True)
        await _Server(config, closing).serve(sockets=[sock])
    finally:
        await manager.aclose()
        await close_models()


def listening_socket(host: str, port: int) -> socket.socket:
    """Bound here, not by uvicorn, whose bind failure exits the process from inside the loop."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            "--listen",
            f"{host}:{port}",
            f"cannot listen there ({exc.strerror}): pick a free port or an address of this machine",
        ) from None
    return sock

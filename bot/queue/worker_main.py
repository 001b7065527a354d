"""``python -m bot.queue.worker_main``: a worker process running the dialog manager on jobs.

Configuration is the usual settings (FMBOT_STORE must be Redis: ``redis://``,
``redis+sentinel://`` or ``redis+cluster://``; FMBOT_TEXT_MODEL, ...) plus the queue's own,
read here until they are Settings fields:

    FMBOT_REDIS_PREFIX       key prefix (default ``fmbot``)
    FMBOT_QUEUE_URL          Redis for the queue (default FMBOT_STORE; Sentinel and Cluster ok)
    FMBOT_QUEUE_PARTITIONS   partition count, the same in every process (default 16)
    FMBOT_QUEUE_LEASE_MS     lease TTL: how soon a dead worker's chats move on (default 10000)

SIGTERM/SIGINT: finish running turns (up to 30 s), hand partitions over, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from bot.app import build_manager
from bot.errors import ConfigError
from bot.models.registry import close_models
from bot.observe import logs
from bot.observe.server import serving as metrics_served
from bot.queue.chat import DialogHandler, journal_manager
from bot.queue.keys import QueueKeys
from bot.queue.partition import Tuning
from bot.queue.worker import Worker
from bot.redis import connect
from bot.runtime import run_server
from bot.settings import Settings, load_settings, log_settings

log = logging.getLogger("bot.queue")


async def serve() -> None:
    settings = load_settings()
    logs.configure(
        settings.log_format,
        settings.log_level,
        default_level="INFO",
        secrets=logs.secret_values(settings),
    )
    async with metrics_served(settings.metrics_listen, "worker"):
        await _serve(settings)


async def _serve(settings: Settings) -> None:
    keys = QueueKeys.from_settings(settings)
    lease_ms = settings.queue_lease_ms
    manager = await build_manager(settings)
    redis = None
    try:
        journal_manager(manager, settings, keys.prefix)
        redis = connect(settings.queue_url or settings.store_url)
        tuning = Tuning(overlap=manager.busy.overlaps)  # merge / interrupt see arrivals
        handler = DialogHandler(manager, keys)
        worker = Worker(redis, handler, keys=keys, lease_ms=lease_ms, tuning=tuning)
        loop = asyncio.get_running_loop()
        stopping: set[asyncio.Task[None]] = set()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: stopping.add(loop.create_task(worker.stop())))
        log.info(
            "worker %s started (prefix %s, %d partitions)",
            worker.name,
            keys.prefix,
            keys.partitions,
        )
        print(f"worker {worker.name} ready", flush=True)
        await worker.run()
    finally:
        if redis is not None:
            await redis.aclose()
        await manager.aclose()
        await close_models()


def main() -> None:
    # Before the settings, whose errors are log lines too (json), from where they are read.
    logs.configure(*log_settings(), default_level="INFO")
    try:
        run_server(serve())
    except ConfigError as exc:
        if logs.current_format() == "json":
            log.error("configuration error: %s", exc)
        else:
            print(f"fmbot worker: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    with contextlib.suppress(Exception):
        sys.stdout.flush()


if __name__ == "__main__":
    main()

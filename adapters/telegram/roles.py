"""``fmbot telegram --role ingress|worker|all``: one process, or the two halves over Redis.

``all`` (the default) is :func:`adapters.telegram.runner.run_telegram`, with no queue. ``ingress``
(:mod:`adapters.telegram.ingress`) and ``worker`` (:mod:`adapters.telegram.worker`) share a
Redis work queue: ``FMBOT_QUEUE_URL``, defaulting to ``FMBOT_STORE``; ``FMBOT_REDIS_PREFIX``,
``FMBOT_QUEUE_PARTITIONS`` and ``FMBOT_QUEUE_LEASE_MS`` as :mod:`bot.queue.worker_main` reads
them. Run one ingress and any number of workers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Literal
from urllib.parse import urlsplit

from aiogram import Bot
from aiohttp import web

from adapters.telegram.app import TelegramApp, make_bot
from adapters.telegram.ingress import ALLOWED_UPDATES, PollingIngress, webhook_app
from adapters.telegram.redact import secrets_redacted
from adapters.telegram.runner import parse_listen, start_bot, stop_on_signals
from adapters.telegram.settings import TelegramSettings
from adapters.telegram.worker import TelegramWorker
from bot.errors import ConfigError
from bot.observe.server import serving as metrics_served
from bot.queue import Ingress, QueueKeys
from bot.redis.connect import REDIS_SCHEMES, connect
from bot.settings import REDIS_STORE_SCHEMES, Settings
from bot.urls import mask_url

log = logging.getLogger(__name__)

QUEUE_SCHEMES = REDIS_SCHEMES


def queue_url(settings: Settings) -> str:
    """The Redis the roles share; ConfigError (one line) when there is none."""
    explicit = (settings.queue_url or "").strip()
    url = explicit or settings.store_url
    if urlsplit(url).scheme not in QUEUE_SCHEMES:
        raise ConfigError(
            "FMBOT_QUEUE_URL" if explicit else "FMBOT_QUEUE_URL (default FMBOT_STORE)",
            mask_url(url),
            "--role ingress/worker share a Redis queue: set FMBOT_QUEUE_URL or FMBOT_STORE to "
            "redis://HOST:PORT/DB (or redis+sentinel://, redis+cluster://), or run everything in "
            "one process with --role all",
        )
    return url


def queue_keys(settings: Settings) -> QueueKeys:
    return QueueKeys.from_settings(settings)


async def run_role(
    role: Literal["ingress", "worker"],
    settings: Settings,
    tg: TelegramSettings,
    *,
    webhook: str | None,
    listen: str,
) -> None:
    """``fmbot telegram --role ingress|worker``: run until SIGTERM/SIGINT."""
    host, port = parse_listen(listen)
    if webhook is not None and not webhook.startswith("https://"):
        raise ConfigError("--webhook", webhook, "Telegram only delivers to https:// URLs")
    if role == "worker" and webhook is not None:
        raise ConfigError("--webhook", webhook, "only --role ingress or all receive updates")
    url = queue_url(settings)
    async with metrics_served(settings.metrics_listen, role):
        if role == "ingress":
            await run_ingress(tg, url, queue_keys(settings), webhook=webhook, host=host, port=port)
        else:
            await run_worker(settings, tg, url)


async def run_ingress(
    tg: TelegramSettings,
    url: str,
    keys: QueueKeys,
    *,
    webhook: str | None,
    host: str,
    port: int,
) -> None:
    redis = connect(url)
    bot = make_bot(tg)
    secrets = (tg.token, tg.secret_token())
    ingress = Ingress(redis, keys)
    try:
        with secrets_redacted(*secrets):
            await start_bot(bot, tg, secrets)
            if webhook is None:
                poller = PollingIngress(bot, ingress)
                with stop_on_signals(poller.request_stop):
                    print("ingress polling", flush=True)
                    await poller.run()
            else:
                await _serve_webhook(bot, tg, ingress, webhook, host, port)
    finally:
        await bot.session.close()
        await redis.aclose()


WEBHOOK_CONNECTIONS = 1


async def _serve_webhook(
    bot: Bot, tg: TelegramSettings, ingress: Ingress, url: str, host: str, port: int
) -> None:
    stop = asyncio.Event()
    runner = web.AppRunner(
        webhook_app(ingress, tg.secret_token(), urlsplit(url).path or "/"), access_log=None
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        with stop_on_signals(stop.set):
            await site.start()
            await bot.set_webhook(
                url,
                secret_token=tg.secret_token(),
                allowed_updates=ALLOWED_UPDATES,
                drop_pending_updates=False,
                # One delivery at a time: with Telegram's default of 40 parallel requests two
                # messages of one chat could be queued in the wrong order. Each request only
                # waits for one enqueue, so one connection keeps up with any bot's traffic.
                max_connections=WEBHOOK_CONNECTIONS,
            )
            log.info("webhook ingress listening on %s:%s", host, port)
            print("ingress listening", flush=True)
            await stop.wait()
    finally:
        # Requests in flight finish (their update is queued or refused); Telegram keeps the rest.
        await runner.cleanup()


async def run_worker(settings: Settings, tg: TelegramSettings, url: str) -> None:
    from bot.app import build_manager
    from bot.models.registry import close_models
    from bot.queue.chat import journal_manager

    if urlsplit(settings.store_url).scheme not in REDIS_STORE_SCHEMES:
        # Checked before the model loads: history must be where every worker can read it.
        raise ConfigError(
            "FMBOT_STORE",
            mask_url(settings.store_url),
            "--role worker keeps history in Redis, shared by all workers: use redis://HOST:PORT/DB "
            "(or redis+sentinel://, redis+cluster://)",
        )
    keys = queue_keys(settings)
    lease_ms = settings.queue_lease_ms
    manager = await build_manager(settings)
    redis = connect(url)
    try:
        journal_manager(manager, settings, keys.prefix)
        app = TelegramApp(manager, tg)
        worker = TelegramWorker(app, redis, keys, lease_ms=lease_ms)
        stopping: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()

        def request_stop() -> None:
            stopping.add(loop.create_task(worker.stop(tg.shutdown_grace)))

        try:
            with secrets_redacted(*app.secrets), stop_on_signals(request_stop):
                # Only the token check: the ingress publishes the command menu.
                await start_bot(app.bot, tg, app.secrets, menu=False)
                log.info("worker %s started (prefix %s)", worker.worker.name, keys.prefix)
                print(f"worker {worker.worker.name} ready", flush=True)
                await worker.run()
        finally:
            await app.bot.session.close()
    finally:
        await redis.aclose()
        await manager.aclose()
        await close_models()

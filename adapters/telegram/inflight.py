"""Updates being handled right now, so a shutdown can let them finish.

aiogram's polling confirms an update (by asking for the next offset) as soon as it has started
a task for it, and its shutdown does not wait for those tasks: a restart mid-reply would lose
the message. This outer middleware sees every update enter and leave the dispatcher.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import TelegramObject, Update

log = logging.getLogger(__name__)

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]


class InFlight(BaseMiddleware):
    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()
        #: Highest update_id that entered the dispatcher (what a final getUpdates confirms).
        self.last_update_id: int | None = None

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        if isinstance(event, Update):
            self.last_update_id = max(self.last_update_id or 0, event.update_id)
        task = asyncio.current_task()
        if task is None:
            return await handler(event, data)
        self.tasks.add(task)
        try:
            return await handler(event, data)
        finally:
            self.tasks.discard(task)

    async def drain(self, grace: float) -> bool:
        """Wait up to ``grace`` seconds for updates in progress; cancel the rest.

        True if everything finished in time.
        """
        deadline = time.monotonic() + grace
        current = asyncio.current_task()
        while pending := {t for t in self.tasks if t is not current and not t.done()}:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("shutdown: cutting off %d unfinished replies", len(pending))
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=5)
                return False
            log.info("shutdown: waiting for %d replies in progress", len(pending))
            await asyncio.wait(pending, timeout=remaining)
        return True

"""Commands of concurrent callers sent to Redis together: one pipeline per event-loop step.

A worker runs many chats' turns at once, and each turn ends with one write (the journaled
append). Sent one by one, every write costs a request, a reply and the system calls and pool
checkout around them; gathered, the writes of all turns that finished in the same step of the
event loop share one pipeline (as acknowledgements are batched in :mod:`bot.queue.partition`).
The first caller of a step starts the flush; callers that arrive before it runs join it, so a
lone caller waits no longer than one step of the loop. With a ``window`` (seconds) the flush
waits that long first, so callers spread over a few steps share it too (the delivered marks,
which follow the channel's network replies rather than one step of the loop): a lone caller
then waits the window.

Each caller gets its own replies, an error reply as an exception object in their place (the
pipeline is not transactional: one caller's error does not touch another's commands); a
connection error fails every caller of the batch. A caller cancelled while waiting leaves its
commands in the batch: sent or not, the caller must treat them as unknown, as with any request.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bot.redis import RedisClient

Command = tuple[Any, ...]


class Batcher:
    def __init__(self, client: RedisClient, *, window: float = 0.0) -> None:
        self.client = client
        self.window = window
        self._pending: list[tuple[list[Command], asyncio.Future[list[Any]]]] = []
        self._flushes: set[asyncio.Task[None]] = set()

    async def run(self, *commands: Command) -> list[Any]:
        """Send ``commands`` (each ``("NAME", *args)``) in the next batch; their replies."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((list(commands), future))
        if len(self._pending) == 1:  # the first of this step starts the flush
            flush = asyncio.create_task(self._flush())
            self._flushes.add(flush)  # a strong reference until it is done
            flush.add_done_callback(self._flushes.discard)
        return await future

    async def _flush(self) -> None:
        batch: list[tuple[list[Command], asyncio.Future[list[Any]]]] | None = None
        try:
            if self.window > 0:
                await asyncio.sleep(self.window)
            batch, self._pending = self._pending, []
            async with self.client.pipeline(transaction=False) as pipe:
                for commands, _ in batch:
                    for command in commands:
                        pipe.execute_command(*command)
                replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            if batch is None:  # cancelled while waiting: nothing was sent
                batch, self._pending = self._pending, []
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        start = 0
        for commands, future in batch:
            if not future.done():
                future.set_result(list(replies[start : start + len(commands)]))
            start += len(commands)

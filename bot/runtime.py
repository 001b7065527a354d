"""Running a server process's event loop: uvloop when it is installed, asyncio's own otherwise.

Workers, the Telegram roles and the benchmark spend most of their CPU in the event loop and the
Redis client's awaits; uvloop (a dependency on Linux and macOS) cuts that by about a fifth. The
console keeps asyncio's loop: it waits for a person, and prompt_toolkit is tested on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None (asyncio's default) when uvloop is not installed."""
    try:
        import uvloop
    except ImportError:  # Windows, or installed without it
        return None
    return uvloop.new_event_loop


def loop_name() -> str:
    return "uvloop" if loop_factory() is not None else "asyncio"


def run_server(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the fastest loop available."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)

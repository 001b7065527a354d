"""Running a server process's event loop: uvloop when it is installed, asyncio's own otherwise.

Workers, the Telegram roles and the benchmark spend most of their CPU in the event loop and the
Redis client's awaits; uvloop (a dependency on Linux and macOS) cuts that by about a fifth. The
console keeps asyncio's loop: it waits for a person, and prompt_toolkit is tested on it.

A server also collects garbage less often (:func:`server_gc`): every turn allocates thousands of
short-lived objects (events, messages, Redis replies), and at CPython's default threshold the
cyclic collector ran several times per turn, each time scanning the long-lived ones too. In
``fmbot bench`` this made a tenth of the worker's CPU and most of its slowest turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

#: Net allocations of tracked (container) objects between young collections; CPython's default
#: is 700 (2,000 from 3.14). Cycles are still collected, older generations ~14x less often:
#: cyclic garbage lives longer (README "fmbot bench" gives the memory it cost there).
SERVER_GC_THRESHOLD = 10_000


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None (asyncio's default) when uvloop is not installed."""
    try:
        import uvloop
    except ImportError:  # Windows, or installed without it
        return None
    return uvloop.new_event_loop


def loop_name() -> str:
    return "uvloop" if loop_factory() is not None else "asyncio"


@contextlib.contextmanager
def server_gc() -> Iterator[None]:
    """Fewer garbage collections while a server runs; the previous settings afterwards.

    ``gc.freeze()`` moves what exists at start (mostly what imports made: modules, classes,
    compiled templates) out of the collector's sight, so no collection scans it again; reference
    counting still frees it. Left as they are: objects someone else froze, and a collector
    turned off (threshold 0)."""
    previous = gc.get_threshold()
    freeze = gc.get_freeze_count() == 0
    if freeze:
        gc.collect()  # freeze what lives, not garbage waiting for a collection
        gc.freeze()
    if previous[0]:
        gc.set_threshold(max(previous[0], SERVER_GC_THRESHOLD), *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        if freeze:
            gc.unfreeze()


def run_server(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the fastest loop available, collecting garbage as a server."""
    with server_gc(), asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)

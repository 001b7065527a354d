"""A server process's runtime (bot.runtime): its event loop and its garbage collection."""

from __future__ import annotations

import asyncio
import gc

import pytest

from bot.runtime import SERVER_GC_THRESHOLD, loop_factory, run_server


def test_a_server_collects_garbage_less_often_and_restores_the_settings() -> None:
    before = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    assert before[0] < SERVER_GC_THRESHOLD  # CPython's default; else this test proves nothing

    async def inside() -> tuple[tuple[int, int, int], int, str]:
        return (
            gc.get_threshold(),
            gc.get_freeze_count(),
            type(asyncio.get_running_loop()).__module__,
        )

    threshold, frozen, loop_module = run_server(inside())
    assert threshold == (SERVER_GC_THRESHOLD, *before[1:])
    assert frozen > frozen_before  # what existed at start is out of the collector's sight
    expected_loop = "uvloop" if loop_factory() is not None else "asyncio"
    assert loop_module.startswith(expected_loop)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen_before


def test_settings_are_restored_when_the_server_fails() -> None:
    before, frozen_before = gc.get_threshold(), gc.get_freeze_count()

    async def failing() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_server(failing())
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen_before

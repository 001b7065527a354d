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
    inside: list[int] = []

    async def failing() -> None:
        inside.append(gc.get_threshold()[0])
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_server(failing())
    assert inside == [SERVER_GC_THRESHOLD]
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen_before


def test_what_others_set_is_left_alone() -> None:
    """Objects frozen before stay frozen; a collector turned off stays off."""
    before = gc.get_threshold()
    gc.freeze()
    frozen = gc.get_freeze_count()
    gc.set_threshold(0)
    try:

        async def inside() -> tuple[int, int]:
            return gc.get_threshold()[0], gc.get_freeze_count()

        assert run_server(inside()) == (0, frozen)
        assert gc.get_freeze_count() == frozen
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()

"""A bot loads its templates' knowledge bases as it starts (``build_manager``), in the
background: the first question then finds the vectors and the embedder ready.

Real SQLite + sqlite-vec and the real e5 model. What was loaded is seen from the outside: the
log lines of a vector read and of the embedder's load, and the files the process has open."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.app import build_manager
from bot.dialog import DialogManager
from bot.events import FinalText, Incoming, Notice, ReplyEvent
from bot.kb.embedders import LocalE5Embedder
from bot.kb.index import KnowledgeBase
from bot.models.registry import close_models
from bot.settings import Settings
from tests.kb_files import build_shop_kb, write_shop_docs

READ = "vectors read in"
LOADED = "embedder local:e5 loaded"
WAIT_S = 60.0


@pytest.fixture(scope="module")
async def kb_dir(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Path]:
    yield await build_shop_kb(tmp_path_factory.mktemp("kb"))


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO)
    return caplog


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


async def until_logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not lines(caplog, text):
        assert asyncio.get_running_loop().time() < deadline, f"never logged: {text!r}"
        await asyncio.sleep(0.02)


def open_files() -> set[str]:
    """The files this process has open (Linux: /proc/self/fd)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue  # closed while listing (the listing's own descriptor)
    return found


def settings(tmp_path: Path, kb_dir: Path, template: str, **env: Any) -> Settings:
    prompts = tmp_path / "prompts"
    prompts.mkdir(exist_ok=True)
    (prompts / "t.yaml").write_text(f"name: t\ninstruction: Be brief.\n{template}", "utf-8")
    values: dict[str, Any] = {
        "FMBOT_TEXT_MODEL": "echo:",
        "FMBOT_HOME": str(tmp_path / "home"),
        "FMBOT_PROMPTS_DIR": str(prompts),
        "FMBOT_DEFAULT_MODE": "t",
        "FMBOT_KB_DIR": str(kb_dir),
        "FMBOT_EMBED_MODEL": "local:e5",
        **env,
    }
    return Settings(_env_file=None, **values)


@pytest.fixture
async def started() -> AsyncIterator[list[DialogManager]]:
    """Managers a test builds, closed after it."""
    managers: list[DialogManager] = []
    yield managers
    for manager in managers:
        await manager.aclose()
    await close_models()


async def start(managers: list[DialogManager], s: Settings) -> DialogManager:
    manager = await build_manager(s)
    managers.append(manager)
    return manager


async def ask(manager: DialogManager, text: str) -> list[ReplyEvent]:
    return [e async for e in manager.handle(Incoming("c", text))]


async def test_the_first_question_finds_the_knowledge_loaded_at_start(
    tmp_path: Path, kb_dir: Path, logged: pytest.LogCaptureFixture, started: list[DialogManager]
) -> None:
    manager = await start(started, settings(tmp_path, kb_dir, "knowledge: shop\n"))
    await until_logged(logged, READ)
    await until_logged(logged, LOADED)
    assert str(kb_dir / "shop.sqlite") in open_files()
    [read] = lines(logged, READ)
    assert read.getMessage().startswith("knowledge base shop: ")

    events = await ask(manager, "How long is the warranty?")
    final = events[-1]
    assert isinstance(final, FinalText), events
    assert final.sources and final.sources[0].source == "warranty.md"
    # The search used what the start loaded: no second read, no second load.
    assert len(lines(logged, READ)) == 1
    assert len(lines(logged, LOADED)) == 1


async def test_a_question_before_the_load_is_done_waits_for_the_same_load(
    tmp_path: Path, kb_dir: Path, logged: pytest.LogCaptureFixture, started: list[DialogManager]
) -> None:
    manager = await start(started, settings(tmp_path, kb_dir, "knowledge: shop\n"))
    events = await ask(manager, "How long is the warranty?")  # at once: the load has just begun
    assert isinstance(events[-1], FinalText) and events[-1].sources, events
    assert len(lines(logged, READ)) == 1
    assert len(lines(logged, LOADED)) == 1


async def test_a_bot_without_knowledge_templates_loads_nothing(
    tmp_path: Path, kb_dir: Path, logged: pytest.LogCaptureFixture, started: list[DialogManager]
) -> None:
    manager = await start(started, settings(tmp_path, kb_dir, ""))
    events = await ask(manager, "hello")
    assert isinstance(events[-1], FinalText) and events[-1].sources == ()
    await asyncio.sleep(0.5)  # time a background load would have had to begin
    assert not [f for f in open_files() if f.startswith(str(kb_dir))]
    assert not [r for r in logged.records if r.name.startswith("bot.kb")]


async def test_a_knowledge_base_missing_at_start_is_told_by_the_turn(
    tmp_path: Path, logged: pytest.LogCaptureFixture, started: list[DialogManager]
) -> None:
    kb_dir = tmp_path / "kb"
    manager = await start(started, settings(tmp_path, kb_dir, "knowledge: shop\n"))
    await until_logged(logged, "not loaded at start")
    [line] = lines(logged, "not loaded at start")
    assert line.levelno == logging.INFO and "fmbot kb add shop" in line.getMessage()
    events = await ask(manager, "How long is the warranty?")
    assert len(events) == 1 and isinstance(events[0], Notice), events
    assert "no knowledge base 'shop'" in events[0].text
    assert not lines(logged, LOADED)  # nothing to search: the embedder was not loaded for it

    # Built while the bot runs: the next question uses it.
    kb = await KnowledgeBase.open(kb_dir, "shop", create=True)
    try:
        await kb.add([write_shop_docs(tmp_path / "docs")], LocalE5Embedder())
    finally:
        await kb.aclose()
    events = await ask(manager, "How long is the warranty?")
    assert isinstance(events[-1], FinalText) and events[-1].sources, events


async def test_a_failed_load_is_one_log_line_and_the_turn_reports_it(
    tmp_path: Path, logged: pytest.LogCaptureFixture, started: list[DialogManager]
) -> None:
    kb_dir = tmp_path / "kb"
    kb_dir.mkdir()
    (kb_dir / "shop.sqlite").write_bytes(b"not a database, whatever its name says" * 100)
    manager = await start(started, settings(tmp_path, kb_dir, "knowledge: shop\n"))
    await until_logged(logged, "not loaded at start")
    [line] = [r for r in logged.records if r.levelno >= logging.WARNING]
    message = line.getMessage()
    assert "knowledge base 'shop' not loaded at start" in message and "\n" not in message
    assert line.exc_info is None  # no traceback
    events = await ask(manager, "How long is the warranty?")
    assert len(events) == 1 and isinstance(events[0], Notice), events
    assert "fmbot kb add shop" in events[0].text

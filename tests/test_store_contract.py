"""One contract for every dialog store: memory, a real SQLite file and real Redis servers.

Redis runs as one server, as a 3-master Cluster and behind a Sentinel (the last two started by
the tests: see tests/conftest.py), each opened from its URL as FMBOT_STORE would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from bot.stores import DialogStore, Turn, open_store
from bot.stores.redis import RedisStore
from bot.stores.sqlite import SQLiteStore

Opener = Callable[[], Coroutine[Any, Any, DialogStore]]


@pytest.fixture(
    params=["memory", "sqlite", "redis", "redis-cluster", "redis-sentinel", "redis-unix"]
)
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """A function that opens (or re-opens) the same store, so persistence can be checked."""
    opened: list[DialogStore] = []
    if request.param == "memory":
        memory = await open_store("memory://")

        async def open_() -> DialogStore:
            return memory
    elif request.param == "sqlite":

        async def open_() -> DialogStore:
            return await SQLiteStore.open(tmp_path / "nested" / "fmbot.db")
    elif request.param == "redis":
        prefix = request.getfixturevalue("redis_prefix")
        url = request.getfixturevalue("redis_server")

        async def open_() -> DialogStore:
            return RedisStore.from_url(url, prefix=prefix)
    else:
        # Servers started for the session and thrown away after it: a fresh prefix suffices.
        url = request.getfixturevalue(request.param.replace("-", "_"))
        topology_prefix = f"fmbot-test-{uuid.uuid4().hex[:12]}"

        async def open_() -> DialogStore:
            store = await open_store(url, prefix=topology_prefix)
            assert isinstance(store, RedisStore)
            return store

    async def tracked() -> DialogStore:
        store = await open_()
        opened.append(store)
        return store

    yield tracked
    for store in opened:
        await store.aclose()


@pytest.fixture
async def store(opener: Opener) -> DialogStore:
    return await opener()


def pair(n: int) -> tuple[Turn, Turn]:
    return Turn("user", f"question {n}", meta={"n": n}), Turn("assistant", f"answer {n}")


async def test_append_then_read_in_order(store: DialogStore) -> None:
    await store.append("a", *pair(1))
    await store.append("a", *pair(2))
    turns = await store.read("a")
    assert [(t.role, t.text) for t in turns] == [
        ("user", "question 1"),
        ("assistant", "answer 1"),
        ("user", "question 2"),
        ("assistant", "answer 2"),
    ]
    assert turns[0].meta == {"n": 1}
    assert turns[0].created_at <= turns[-1].created_at


async def test_read_last_n(store: DialogStore) -> None:
    for n in range(5):
        await store.append("a", *pair(n))
    last = await store.read("a", last=3)
    assert [t.text for t in last] == ["answer 3", "question 4", "answer 4"]


async def test_unknown_chat_is_empty(store: DialogStore) -> None:
    assert await store.read("nobody") == []
    assert await store.get_state("nobody") == {}


async def test_unicode_and_template_syntax_survive(store: DialogStore) -> None:
    text = "Привет 👋 {{ 7*7 }} {% if x %}\n\"quoted\" 'single' \\ back"
    await store.append("u", Turn("user", text))
    assert (await store.read("u"))[0].text == text


async def test_reset_keeps_state_delete_forgets(store: DialogStore) -> None:
    await store.append("a", *pair(1))
    await store.set_state("a", mode="translator")
    await store.reset("a")
    assert await store.read("a") == []
    assert await store.get_state("a") == {"mode": "translator"}
    await store.append("a", *pair(2))
    await store.delete("a")
    assert await store.read("a") == []
    assert await store.get_state("a") == {}
    assert "a" not in [c.chat for c in await store.chats()]


async def test_chats_are_isolated(store: DialogStore) -> None:
    await store.append("a", *pair(1))
    await store.append("b", *pair(2))
    await store.set_state("b", mode="x")
    await store.reset("a")
    assert [t.text for t in await store.read("b")] == ["question 2", "answer 2"]
    assert await store.get_state("a") == {}
    await store.delete("b")
    assert await store.read("a") == []
    assert await store.read("b") == []


async def test_chats_lists_newest_first_with_counts(store: DialogStore) -> None:
    await store.append("old", *pair(1))
    await asyncio.sleep(0.01)
    await store.append("new", *pair(1))
    await store.append("new", *pair(2))
    infos = {c.chat: c for c in await store.chats()}
    assert infos["new"].turns == 4 and infos["old"].turns == 2
    order = [c.chat for c in await store.chats() if c.chat in ("old", "new")]
    assert order == ["new", "old"]


async def test_state_merges_keys(store: DialogStore) -> None:
    await asyncio.gather(
        store.set_state("a", mode="m"), store.set_state("a", lang="ru"), store.set_state("a", x="1")
    )
    assert await store.get_state("a") == {"mode": "m", "lang": "ru", "x": "1"}
    await store.set_state("a", mode="other")
    assert (await store.get_state("a"))["mode"] == "other"


async def test_concurrent_appends_keep_pairs_together(store: DialogStore) -> None:
    await asyncio.gather(*(store.append("a", *pair(n)) for n in range(50)))
    turns = await store.read("a")
    assert len(turns) == 100
    for user, assistant in zip(turns[::2], turns[1::2], strict=True):
        n = user.text.removeprefix("question ")
        assert (user.role, assistant.role) == ("user", "assistant")
        assert assistant.text == f"answer {n}"
    assert sorted(int(t.text.split()[1]) for t in turns[::2]) == list(range(50))


async def test_survives_reopen(opener: Opener) -> None:
    first = await opener()
    await first.append("a", *pair(1))
    await first.set_state("a", mode="m")
    second = await opener()
    assert [t.text for t in await second.read("a")] == ["question 1", "answer 1"]
    assert await second.get_state("a") == {"mode": "m"}


async def test_increment_counts_atomically(store: DialogStore) -> None:
    await store.set_state("a", mode="m")
    await asyncio.gather(*(store.increment("a", tokens=5, images=1) for _ in range(20)))
    state = await store.get_state("a")
    assert state == {"mode": "m", "tokens": "100", "images": "20"}


async def test_max_turns_keeps_the_newest(store: DialogStore) -> None:
    store.max_turns = 4
    for n in range(5):
        await store.append("a", *pair(n))
    assert [t.text for t in await store.read("a")] == [
        "question 3",
        "answer 3",
        "question 4",
        "answer 4",
    ]


async def test_ttl_forgets_idle_chats(store: DialogStore) -> None:
    store.ttl = 1
    await store.append("a", *pair(1))
    await store.set_state("a", mode="m")
    assert len(await store.read("a")) == 2
    await asyncio.sleep(1.3)
    assert await store.read("a") == []
    assert await store.get_state("a") == {}
    assert "a" not in [c.chat for c in await store.chats()]


async def test_a_cancelled_write_leaves_the_store_usable(store: DialogStore) -> None:
    await store.append("a", *pair(1))
    task = asyncio.create_task(store.reset("a"))
    await asyncio.sleep(0)  # let it start, then cancel it mid-way
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await store.append("a", *pair(2))
    assert [t.text for t in await store.read("a")][-2:] == ["question 2", "answer 2"]


async def test_load_returns_state_and_newest_turns(store: DialogStore) -> None:
    for n in range(3):
        await store.append("a", *pair(n), counters={"usage_tokens": 7})
    await store.set_state("a", mode="m")
    state, turns = await store.load("a", last=2)
    assert state == {"mode": "m", "usage_tokens": "21"}
    assert [t.text for t in turns] == ["question 2", "answer 2"]
    assert await store.load("nobody") == ({}, [])

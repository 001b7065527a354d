"""Rate limits, daily token budgets and busy policies, through the dialog manager."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.busy import BusyPolicy
from bot.dialog import DialogManager
from bot.errors import StoreError
from bot.events import FinalText, Incoming, Notice, ReplyEvent, TextDelta
from bot.limits import Limits, MemoryLimits, RedisLimits
from bot.models.echo import EchoModel
from bot.prompts.library import PromptLibrary
from bot.stores import DialogStore
from bot.stores.redis import RedisStore
from tests.doubles import Recording, Scripted


@pytest.fixture
async def store(redis_server: str, redis_prefix: str) -> AsyncIterator[RedisStore]:
    s = RedisStore.from_url(redis_server, prefix=redis_prefix)
    yield s
    await s.aclose()


def manager(
    store: DialogStore, model: object, prompts_dir: Path, **kwargs: object
) -> DialogManager:
    return DialogManager(store, model, PromptLibrary(prompts_dir), **kwargs)  # type: ignore[arg-type]


async def collect(
    m: DialogManager, text: str, *, chat: str = "c", user: str = "u1", admin: bool = False
) -> list[ReplyEvent]:
    return [e async for e in m.handle(Incoming(chat, text, user=user, admin=admin))]


def limits_for(kind: str, store: RedisStore, **kwargs: int) -> tuple[Limits, Limits]:
    """Two views of the same limits, as two worker processes would have."""
    if kind == "memory":
        shared = MemoryLimits(**kwargs)
        return shared, shared
    return (
        RedisLimits(store.client, store.prefix, **kwargs),
        RedisLimits(store.client, store.prefix, **kwargs),
    )


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_rate_limit_is_shared_and_refuses_without_a_model_call(
    kind: str, store: RedisStore, prompts_dir: Path
) -> None:
    a, b = limits_for(kind, store, rate_per_minute=2)
    model_a, model_b = Recording(Scripted(["ok"])), Recording(Scripted(["ok"]))
    worker_a = manager(store, model_a, prompts_dir, limits=a)
    worker_b = manager(store, model_b, prompts_dir, limits=b)
    assert isinstance((await collect(worker_a, "one"))[-1], FinalText)
    assert isinstance((await collect(worker_b, "two"))[-1], FinalText)
    [refusal] = await collect(worker_a, "three")
    assert isinstance(refusal, Notice) and "limit is 2 per minute" in refusal.text
    assert len(model_a.requests) + len(model_b.requests) == 2
    [usage] = await collect(worker_b, "/usage")  # commands are not counted
    assert isinstance(usage, Notice) and "this minute 3 of 2 messages" in usage.text
    # Other users and admins are not affected.
    assert isinstance((await collect(worker_b, "hi", user="u2", chat="c2"))[-1], FinalText)
    assert isinstance((await collect(worker_a, "boss", admin=True))[-1], FinalText)


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_daily_token_budget(kind: str, store: RedisStore, prompts_dir: Path) -> None:
    limits, _ = limits_for(kind, store, daily_tokens=20)
    model = Recording(Scripted(["a", "b"]))  # each turn: Usage(10 input, 2 output)
    m = manager(store, model, prompts_dir, limits=limits)
    assert isinstance((await collect(m, "one"))[-1], FinalText)
    assert isinstance((await collect(m, "two"))[-1], FinalText)
    [refusal] = await collect(m, "three")
    assert isinstance(refusal, Notice)
    assert "today's budget of 20 tokens (24 used)" in refusal.text
    assert len(model.requests) == 2
    [usage] = await collect(m, "/usage")
    assert isinstance(usage, Notice)
    assert "20 input + 4 output = 24 tokens" in usage.text
    assert "today 24 of 20 tokens" in usage.text


class TokenCountingDown(MemoryLimits):
    """Limits whose token counter cannot be reached (as when Redis fails mid-turn)."""

    async def add_tokens(self, user: str, tokens: int) -> None:
        raise StoreError("Redis is unavailable: connection refused")


async def test_a_failed_token_count_does_not_report_the_saved_reply_as_lost(
    store: RedisStore, prompts_dir: Path
) -> None:
    m = manager(store, Scripted(["fine"]), prompts_dir, limits=TokenCountingDown(daily_tokens=99))
    events = await collect(m, "hello")
    assert [type(e) for e in events][-1] is FinalText
    assert not [e for e in events if isinstance(e, Notice)]
    assert [t.text for t in await store.read("c")] == ["hello", "fine"]


async def test_queue_answers_every_message_in_order(store: RedisStore, prompts_dir: Path) -> None:
    m = manager(store, Scripted(["r1 ", "r2"], pause=0.02), prompts_dir)
    results = await asyncio.gather(*(collect(m, f"m{n}") for n in range(3)))
    assert all(isinstance(r[-1], FinalText) for r in results)
    turns = await store.read("c")
    assert [t.text for t in turns[::2]] == ["m0", "m1", "m2"]


async def test_merge_turns_waiting_messages_into_one(store: RedisStore, prompts_dir: Path) -> None:
    model = Recording(Scripted(["x ", "y"], pause=0.05))
    m = manager(store, model, prompts_dir, busy_policy=BusyPolicy.MERGE)

    async def later(text: str, delay: float) -> list[ReplyEvent]:
        await asyncio.sleep(delay)
        return await collect(m, text)

    first, second, third = await asyncio.gather(
        collect(m, "m0"), later("m1", 0.02), later("m2", 0.04)
    )
    assert isinstance(first[-1], FinalText) and isinstance(second[-1], FinalText)
    assert third == []  # answered together with m1
    turns = await store.read("c")
    assert [t.text for t in turns[::2]] == ["m0", "m1\n\nm2"]
    assert len(model.requests) == 2


async def test_interrupt_stops_the_current_reply(store: RedisStore, prompts_dir: Path) -> None:
    chunks = [f"w{n} " for n in range(40)]
    m = manager(store, Scripted(chunks, pause=0.02), prompts_dir, busy_policy=BusyPolicy.INTERRUPT)

    async def later() -> list[ReplyEvent]:
        await asyncio.sleep(0.15)
        return await collect(m, "newer")

    first, second = await asyncio.gather(collect(m, "long one"), later())
    stopped = [e for e in first if isinstance(e, FinalText)]
    assert stopped and stopped[0].complete is False
    assert first[-1] == Notice("Stopped: a newer message arrived.", "info")
    printed = "".join(e.text for e in first if isinstance(e, TextDelta))
    assert 0 < len(printed) < len("".join(chunks))
    assert isinstance(second[-1], FinalText) and second[-1].complete
    turns = await store.read("c")
    assert turns[1].meta["status"] == "stopped" and turns[1].text == printed
    assert turns[2].text == "newer" and turns[3].meta["status"] == "complete"


async def test_interrupt_stops_a_model_that_has_not_started_answering(
    store: RedisStore, prompts_dir: Path
) -> None:
    slow = EchoModel(delay=30)  # thinks for half a minute before its first word
    m = manager(store, slow, prompts_dir, busy_policy=BusyPolicy.INTERRUPT)

    async def later() -> list[ReplyEvent]:
        await asyncio.sleep(0.2)
        m.model = EchoModel()  # the newer message gets a quick model
        return await collect(m, "newer")

    first, second = await asyncio.wait_for(asyncio.gather(collect(m, "first"), later()), 10)
    assert first == [Notice("Stopped: a newer message arrived.", "info")]
    assert second[-1] == FinalText("echo: newer")
    turns = await store.read("c")
    assert [(t.text, t.meta.get("status")) for t in turns] == [
        ("first", None),
        ("", "stopped"),
        ("newer", None),
        ("echo: newer", "complete"),
    ]


async def test_a_turn_stopped_before_its_first_token_ends_cleanly_under_interrupt(
    store: RedisStore, prompts_dir: Path
) -> None:
    """/stop, Ctrl-C or a worker's abort cancel the turn while the model is still silent: the
    cancellation must come out as such (not as "generator already running"), and the model's
    stream must be closed, not left running."""
    closed = asyncio.Event()

    class Silent(EchoModel):
        async def generate(  # type: ignore[override]
            self, messages: object, options: object
        ) -> AsyncIterator[str]:
            try:
                await asyncio.sleep(30)
                yield "never"
            finally:
                closed.set()

    m = manager(store, Silent(), prompts_dir, busy_policy=BusyPolicy.INTERRUPT)
    task = asyncio.create_task(collect(m, "first"))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed.is_set()
    assert await store.read("c") == []  # nothing was said, nothing is stored
    m.model = EchoModel()
    assert (await collect(m, "again"))[-1] == FinalText("echo: again")  # the chat is free


async def test_store_outage_says_temporarily_unavailable(prompts_dir: Path) -> None:
    dead = RedisStore.from_url("redis://127.0.0.1:1/0")
    m = manager(dead, Scripted(["x"]), prompts_dir)
    [notice] = await collect(m, "hello")
    assert isinstance(notice, Notice) and "temporarily unavailable" in notice.text
    await dead.aclose()

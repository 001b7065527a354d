"""The worker's copy of its chats (bot/queue/cache.py) and the journaled store that serves it.

The rule under test: a cached read is only ever what Redis holds. Each test that uses the store
checks the cached answer against a fresh read of the real Redis server.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import pytest

from bot.errors import StoreError
from bot.queue import Job, current_job
from bot.queue.cache import ChatCache
from bot.queue.job import Tenure
from bot.queue.journal import JournaledRedisStore
from bot.redis.connect import connect
from bot.stores.base import Turn
from bot.stores.redis import RedisStore
from tests.conftest import answered


def pair(n: int) -> tuple[Turn, Turn]:
    return Turn("user", f"q{n}"), Turn("assistant", f"a{n}")


# --- the cache on its own ---------------------------------------------------------------------


def fill(
    cache: ChatCache, tenure: object, turns: list[Turn], *, last: int | None = 10, **kw: object
) -> None:
    """What a read of chat "c" returned: ``turns`` (the whole list, unless ``length`` says)."""
    state = kw.pop("state", {})
    ttl = kw.pop("ttl", None)
    length = kw.pop("length", len(turns))
    cache.fill("c", tenure, state, turns, last, ttl, cache.epoch, length)  # type: ignore[arg-type]


def wrote(
    cache: ChatCache,
    tenure: object,
    turns: tuple[Turn, ...],
    length: int,
    *,
    existed: bool = True,
    counters: dict[str, int] | None = None,
    max_turns: int | None = None,
    ttl: float | None = None,
) -> None:
    """Redis confirmed appending ``turns`` to chat "c" and reported ``existed`` / ``length``."""
    cache.appended(
        "c",
        tenure,
        turns,
        counters,
        max_turns=max_turns,
        ttl=ttl,
        existed=existed,
        length=length,
        sent=time.monotonic(),
    )


def test_an_entry_serves_only_its_own_tenure_and_returns_copies() -> None:
    cache, mine, other = ChatCache(), object(), object()
    fill(cache, mine, list(pair(1)), state={"mode": "x"})
    assert cache.get("c", other, 10) is None  # the lease was lost and taken again: read Redis
    hit = cache.get("c", mine, 10)
    assert hit is not None
    state, turns = hit
    state["mode"] = "changed"
    turns.pop()
    again = cache.get("c", mine, 10)
    assert again is not None and again[0] == {"mode": "x"} and len(again[1]) == 2


def test_appends_extend_trim_and_count_like_redis() -> None:
    cache, me = ChatCache(), object()
    fill(cache, me, [], last=4)
    for n in range(3):
        wrote(cache, me, pair(n), length=2 * n + 2, existed=n > 0, counters={"usage_in": 5})
    hit = cache.get("c", me, 4)
    assert hit is not None
    state, turns = hit
    assert [t.text for t in turns] == ["q1", "a1", "q2", "a2"]  # the window it was read with
    assert state == {"usage_in": "15"}
    assert cache.get("c", me, 5) is None  # a wider window than it holds: read Redis


def test_the_redis_turn_cap_is_followed() -> None:
    cache, me = ChatCache(), object()
    fill(cache, me, list(pair(1)), last=None)
    wrote(cache, me, pair(2), length=3, max_turns=3)
    hit = cache.get("c", me, None)
    assert hit is not None and [t.text for t in hit[1]] == ["a1", "q2", "a2"]


@pytest.mark.parametrize(
    "existed,length,why",
    [
        (False, 2, "the keys expired while the model was answering"),
        (True, 5, "something else appended a turn"),
        (True, 3, "something else deleted turns"),
    ],
)
def test_a_write_that_does_not_land_on_the_remembered_list_drops_the_entry(
    existed: bool, length: int, why: str
) -> None:
    cache, me = ChatCache(), object()
    fill(cache, me, list(pair(1)))  # Redis held 2 turns
    wrote(cache, me, pair(2), length=length, existed=existed)  # 4 expected, on an existing list
    assert cache.get("c", me, 10) is None, why


def test_with_a_ttl_an_entry_is_used_only_after_this_worker_wrote() -> None:
    cache, me = ChatCache(), object()
    fill(cache, me, list(pair(1)), ttl=3600)
    assert cache.get("c", me, 10) is None  # when Redis expires it depends on a write we missed
    fill(cache, me, list(pair(1)), ttl=3600)
    wrote(cache, me, pair(2), length=4, ttl=3600)
    assert cache.get("c", me, 10) is not None
    wrote(cache, me, pair(3), length=6, ttl=0.5)  # expires (less 1 s) at once
    assert cache.get("c", me, 10) is None


def test_a_read_that_overlapped_a_write_it_cannot_see_is_not_kept() -> None:
    for overlapping in ("drop", "append without an entry"):
        cache, me = ChatCache(), object()
        epoch = cache.epoch  # the read starts
        if overlapping == "drop":
            cache.drop("c")  # /mode from a callback writes meanwhile
        else:
            wrote(cache, me, pair(9), length=2, existed=False)  # a stopped turn's late save
        cache.fill("c", me, {"mode": "old"}, [], 10, None, epoch, 0)
        assert cache.get("c", me, 10) is None, overlapping


def test_the_least_recently_used_chats_are_dropped_beyond_the_memory_bound() -> None:
    history = [pair(n)[k] for n in range(5) for k in (0, 1)]
    one = ChatCache()
    one.fill("a", object(), {}, history, None, None, one.epoch, 10)
    cache, me = ChatCache(max_bytes=2 * one.size + 100), object()  # room for two such chats
    for chat in ("c", "b"):
        cache.fill(chat, me, {}, history, None, None, cache.epoch, 10)
    assert cache.get("c", me, None) is not None  # "c" is now the most recent
    cache.fill("d", me, {}, history, None, None, cache.epoch, 10)
    assert len(cache) == 2 and cache.size <= cache.max_bytes
    assert cache.get("b", me, None) is None and cache.get("c", me, None) is not None
    # Growing a chat counts too (the other goes); dropping one gives its room back.
    wrote(cache, me, pair(6), length=12)
    assert len(cache) == 1 and cache.get("c", me, None) is not None
    cache.drop("c")
    assert cache.size == 0


def test_a_thousand_turn_chat_weighs_more_than_a_short_one() -> None:
    cache, me = ChatCache(), object()
    cache.fill("short", me, {}, pair(0), 10, None, cache.epoch, 2)
    short = cache.size
    long_turns = [Turn("user", "x" * 2000) for _ in range(1000)]
    cache.fill("long", me, {}, long_turns, None, None, cache.epoch, 1000)
    assert cache.size - short > 2000 * 1000 > 100 * short


# --- the journaled store on the real Redis ---------------------------------------------------


@pytest.fixture
async def store(redis_server: str, redis_prefix: str) -> AsyncIterator[JournaledRedisStore]:
    s = JournaledRedisStore(connect(redis_server), redis_prefix)
    s.max_turns = 6
    yield s
    await s.aclose()


@pytest.fixture
async def truth(redis_server: str, redis_prefix: str) -> AsyncIterator[RedisStore]:
    """A plain store on the same keys: what Redis really holds."""
    s = RedisStore(connect(redis_server), redis_prefix)
    yield s
    await s.aclose()


_entry_ids = itertools.count(1)


class Jobs:
    """Jobs of one worker tenure (a partition runner). Entry ids grow across all of them, as a
    stream's do. A test sets ``current_job`` as the worker does; each test runs in its own
    task, so it does not leak."""

    def __init__(self, chat: str) -> None:
        self.chat, self.tenure = chat, Tenure()

    def next(self) -> Job:
        return Job(f"{next(_entry_ids)}-0", self.chat, {}, 0, tenure=self.tenure)


async def test_turns_in_a_lane_are_served_from_the_copy_and_match_redis(
    store: JournaledRedisStore, truth: RedisStore
) -> None:
    jobs = Jobs("c")
    for n in range(5):
        current_job.set(jobs.next())
        state, history = await store.load("c", last=6)
        assert (state, history) == await truth.load("c", last=6)
        await store.append("c", *pair(n), counters={"usage_output_tokens": 2})
    assert store.cache.hits == 4 and store.cache.misses == 1  # Redis was read once
    current_job.set(jobs.next())
    cached = await store.load("c", last=6)
    assert cached == await truth.load("c", last=6)
    assert [t.text for t in cached[1]] == ["q2", "a2", "q3", "a3", "q4", "a4"]  # max_turns
    assert cached[0]["usage_output_tokens"] == "10"


async def test_another_workers_tenure_reads_redis_afresh(
    redis_server: str, redis_prefix: str, truth: RedisStore
) -> None:
    """A partition moves to worker B and back: A's old copy must not be used."""
    a = JournaledRedisStore(connect(redis_server), redis_prefix)
    b = JournaledRedisStore(connect(redis_server), redis_prefix)
    try:
        first, second, back = Jobs("c"), Jobs("c"), Jobs("c")
        current_job.set(first.next())
        await a.load("c", last=10)
        await a.append("c", *pair(1))
        current_job.set(second.next())
        await b.load("c", last=10)
        await b.append("c", *pair(2))  # B owned the partition meanwhile
        current_job.set(back.next())  # A took it back: a new tenure
        assert await a.load("c", last=10) == await truth.load("c", last=10)
        assert [t.text for t in (await a.load("c", last=10))[1]] == ["q1", "a1", "q2", "a2"]
    finally:
        await a.aclose()
        await b.aclose()


@pytest.mark.parametrize("command", ["reset", "set_state", "delete", "increment"])
async def test_writes_the_copy_does_not_model_make_the_next_read_go_to_redis(
    store: JournaledRedisStore, truth: RedisStore, command: str
) -> None:
    jobs = Jobs("c")
    current_job.set(jobs.next())
    await store.load("c", last=6)
    await store.append("c", *pair(1))
    if command == "reset":
        await store.reset("c")
    elif command == "set_state":
        await store.set_state("c", mode="other")
    elif command == "delete":
        await store.delete("c")
    else:
        await store.increment("c", usage_images=1)
    current_job.set(jobs.next())
    assert await store.load("c", last=6) == await truth.load("c", last=6)
    assert store.cache.misses == 2


async def test_a_job_outside_its_lane_neither_reads_nor_keeps_the_copy(
    store: JournaledRedisStore, truth: RedisStore
) -> None:
    jobs = Jobs("c")
    current_job.set(jobs.next())
    await store.load("c", last=6)
    await store.append("c", *pair(1))
    immediate = Job("9-0", "c", {}, 0, ordered=False, tenure=jobs.tenure)
    current_job.set(immediate)
    await store.append("c", *pair(2))  # e.g. a callback that writes while a turn runs
    current_job.set(jobs.next())
    assert await store.load("c", last=6) == await truth.load("c", last=6)


async def test_a_failed_write_drops_the_copy(
    store: JournaledRedisStore, truth: RedisStore, redis_prefix: str
) -> None:
    jobs = Jobs("c")
    current_job.set(jobs.next())
    await store.load("c", last=6)
    await store.append("c", *pair(1))
    # Make the next journaled append fail inside Redis: the turns key holds the wrong type.
    turns = f"{redis_prefix}:{{c}}:turns"
    await truth.client.delete(turns)
    await truth.client.set(turns, "not a list")
    current_job.set(jobs.next())
    with pytest.raises(StoreError, match="WRONGTYPE"):
        await store.append("c", *pair(2))
    assert len(store.cache) == 0
    await truth.client.delete(turns)
    current_job.set(jobs.next())
    assert await store.load("c", last=6) == await truth.load("c", last=6)


async def test_history_ttl_is_honoured_by_the_copy(
    store: JournaledRedisStore, truth: RedisStore
) -> None:
    store.ttl = truth.ttl = 1.5  # the copy gives up 1 s early: after 0.5 s here
    jobs = Jobs("c")
    current_job.set(jobs.next())
    await store.load("c", last=6)
    await store.append("c", *pair(1))
    current_job.set(jobs.next())
    assert len((await store.load("c", last=6))[1]) == 2
    assert store.cache.hits == 1
    await asyncio.sleep(0.6)
    started = time.monotonic()
    assert await store.load("c", last=6) == await truth.load("c", last=6)
    assert store.cache.hits == 1 and time.monotonic() - started < 1.5


async def test_the_journaled_append_is_idempotent_and_its_marker_only_moves_forward(
    store: JournaledRedisStore, truth: RedisStore, redis_prefix: str
) -> None:
    later, earlier = Job("20-0", "c", {}, 0), Job("10-0", "c", {}, 0)
    current_job.set(later)
    await store.append("c", *pair(1))
    await store.append("c", *pair(1))  # the same request again (a retry after a lost reply)
    current_job.set(earlier)
    await store.append("c", *pair(0))  # an older job of the chat, retried late
    assert [t.text for t in await truth.read("c")] == ["q1", "a1"]
    assert await truth.client.get(f"{redis_prefix}:{{c}}:answered") == "20-0"
    assert await answered(store, "c", "10-0") and not await answered(store, "c", "21-0")


async def test_keys_that_expire_while_the_model_answers_leave_no_stale_copy(
    store: JournaledRedisStore, truth: RedisStore, redis_prefix: str
) -> None:
    jobs = Jobs("c")
    current_job.set(jobs.next())
    await store.load("c", last=6)
    await store.append("c", *pair(1), counters={"usage_input_tokens": 5})
    current_job.set(jobs.next())
    await store.load("c", last=6)  # served from the copy...
    await truth.client.delete(f"{redis_prefix}:{{c}}:turns", f"{redis_prefix}:{{c}}:state")
    await store.append("c", *pair(2), counters={"usage_input_tokens": 5})  # ...then Redis forgot
    current_job.set(jobs.next())
    assert await store.load("c", last=6) == await truth.load("c", last=6)
    assert [t.text for t in (await truth.load("c", last=6))[1]] == ["q2", "a2"]

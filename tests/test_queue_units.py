"""The queue's parts against the real Redis: keys, Lua scripts, ingress, journal, URLs, echo."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import cast

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from adapters.cli.bench import RoundTrips, counting_client
from bot.errors import ConfigError, StoreError
from bot.events import Message, Usage
from bot.model_spec import check_text_model_spec, parse_echo_spec
from bot.models.base import GenerationOptions
from bot.models.echo import EchoModel
from bot.models.registry import close_models, get_text_model
from bot.queue import Ingress, Job, QueueKeys, current_job, partition_of, scripts
from bot.queue.batch import Batcher
from bot.queue.job import Tenure
from bot.queue.journal import JournaledRedisStore, Replay
from bot.redis.connect import check_url, connect, parse_sentinel_url
from bot.settings import Settings
from bot.stores.base import Turn
from bot.urls import mask_url
from tests.conftest import answered, free_port


@pytest.fixture
async def client(redis_server: str) -> AsyncIterator[aioredis.Redis]:
    c = connect(redis_server)
    yield c
    await c.aclose()


# --- keys and partitions ---


def test_partition_is_stable_and_spreads_chats() -> None:
    assert partition_of("chat-42", 16) == partition_of("chat-42", 16)  # crc32, not salted hash
    assert partition_of("chat-42", 16) == 3  # fixed forever: processes must agree
    counts = [0] * 16
    for i in range(1600):
        counts[partition_of(f"chat-{i}", 16)] += 1
    assert min(counts) > 60 and max(counts) < 140


def test_partition_keys_share_a_cluster_slot_and_chat_keys_use_the_chat_tag() -> None:
    keys = QueueKeys("fm", 8)
    for key in (keys.jobs(3), keys.lease(3), keys.seen(3, "u1"), keys.dead(3)):
        assert "{q:3}" in key and key.startswith("fm:")
    assert keys.answered("c1") == "fm:{c1}:answered"
    assert keys.replies("c1") == "fm:{c1}:replies"


# --- Lua scripts ---


async def test_lease_is_exclusive_renewable_and_released_only_by_its_owner(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    claim, release = client.register_script(scripts.CLAIM), client.register_script(scripts.RELEASE)
    lease = QueueKeys(redis_prefix).lease(0)
    assert await claim(keys=[lease], args=["a", 10_000]) == 2  # taken: a new tenure
    assert await claim(keys=[lease], args=["b", 10_000]) == 0  # someone else's
    assert await claim(keys=[lease], args=["a", 60_000]) == 1  # renewed by its owner
    assert await client.pttl(lease) > 30_000
    assert await release(keys=[lease], args=["b"]) == 0  # not b's to give up
    assert await client.get(lease) == "a"
    assert await release(keys=[lease], args=["a"]) == 1
    assert await claim(keys=[lease], args=["b", 50]) == 2
    await asyncio.sleep(0.2)  # expired: free for anyone
    assert await claim(keys=[lease], args=["a", 10_000]) == 2
    await client.delete(lease)  # Redis lost it (restart without persistence)
    assert await claim(keys=[lease], args=["a", 10_000]) == 2  # not a renewal: a new tenure


async def test_heartbeat_lists_live_workers_and_drops_expired_and_leaving_ones(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    beat = client.register_script(scripts.HEARTBEAT)
    workers = QueueKeys(redis_prefix).workers
    assert await beat(keys=[workers], args=["w1", 10_000, "0"]) == ["w1"]
    await beat(keys=[workers], args=["w2", 50, "0"])
    await asyncio.sleep(0.2)
    assert await beat(keys=[workers], args=["w3", 10_000, "0"]) == ["w1", "w3"]
    assert await beat(keys=[workers], args=["w1", 10_000, "1"]) == ["w3"]


# --- ingress ---


async def test_enqueue_stores_the_job_and_dedupes_by_update_id(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    keys = QueueKeys(redis_prefix, 4)
    ingress = Ingress(client, keys)
    first = await ingress.enqueue("c1", {"text": "hi"}, dedupe="update-7")
    again = await ingress.enqueue("c1", {"text": "hi"}, dedupe="update-7")
    other = await ingress.enqueue("c1", {"text": "hi"})
    assert first == again != other
    entries = cast(
        list[tuple[str, dict[str, str]]], await client.xrange(keys.jobs(keys.partition("c1")))
    )
    assert [e[0] for e in entries] == [first, other]
    assert entries[0][1] == {"chat": "c1", "payload": '{"text":"hi"}'}


async def test_enqueue_raises_store_error_when_redis_is_unreachable() -> None:
    dead = connect(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    try:
        with pytest.raises(StoreError, match="Could not queue"):
            await Ingress(dead).enqueue("c1", {"text": "hi"})
    finally:
        await dead.aclose()


async def test_processes_with_another_partition_count_are_refused(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    await Ingress(client, QueueKeys(redis_prefix, 8)).enqueue("c", {})
    with pytest.raises(ConfigError, match=r"FMBOT_QUEUE_PARTITIONS.*created with 8"):
        await Ingress(client, QueueKeys(redis_prefix, 4)).enqueue("c", {})


# --- journal ---


async def test_turns_stored_in_a_job_mark_the_job_and_earlier_ones_answered(
    redis_server: str, redis_prefix: str
) -> None:
    store = JournaledRedisStore(aioredis.Redis.from_url(redis_server, decode_responses=True))
    store.prefix = redis_prefix
    try:
        await store.append("c", Turn("user", "outside a job"))  # no job: plain append
        assert not await answered(store, "c", "5-0")
        token = current_job.set(Job("5-1", "c", {}, 0))
        try:
            await store.append("c", Turn("user", "q"), Turn("assistant", "a"))
        finally:
            current_job.reset(token)
        assert await answered(store, "c", "5-1")
        assert await answered(store, "c", "5-0")  # an earlier job of the chat finished before
        assert await answered(store, "c", "4-9")
        assert not await answered(store, "c", "5-2")
        assert not await answered(store, "c", "10-0")  # numeric, not string, comparison
        assert [t.text for t in await store.read("c")] == ["outside a job", "q", "a"]
    finally:
        await store.aclose()


async def test_a_stored_reply_is_undelivered_until_a_channel_marks_it_delivered(
    redis_server: str, redis_prefix: str
) -> None:
    store = JournaledRedisStore(aioredis.Redis.from_url(redis_server, decode_responses=True))
    store.prefix = redis_prefix

    async def store_in(job_id: str, *turns: Turn) -> None:
        token = current_job.set(Job(job_id, "c", {}, 0))
        try:
            await store.append("c", *turns)
        finally:
            current_job.reset(token)

    try:
        assert await store.replay("c", "7-0") == Replay(answered=False)  # nothing stored
        await store_in("7-0", Turn("user", "q"), Turn("assistant", "a"))
        for job in ("7-0", "6-0"):  # its own turn, or a merged turn stored as a later message
            replay = await store.replay("c", job)
            reply = replay.reply
            assert replay.answered and replay.complete
            assert reply is not None and (reply.role, reply.text) == ("assistant", "a")
        assert await store.replay("c", "8-0") == Replay(answered=False)  # not stored: run it
        assert replay == Replay(answered=True, reply=reply, stored_as="7-0")  # what to mark
        await store.delivered("c", "7-0")
        assert await store.replay("c", "7-0") == Replay(answered=True)  # delivered: skip
        assert await store.client.get(f"{redis_prefix}:{{c}}:delivered") == "7-0"

        # Nothing a channel could send again: a picture (not stored), an empty stopped reply.
        image = Turn("assistant", "[image] a cat", meta={"kind": "image"})
        await store_in("9-0", Turn("user", "draw a cat"), image)
        assert await store.replay("c", "9-0") == Replay(answered=True)
        await store_in("10-0", Turn("user", "hm"), Turn("assistant", "", meta={"status": "x"}))
        assert await store.replay("c", "10-0") == Replay(answered=True)

        await store.client.set(f"{redis_prefix}:{{c}}:delivered", "12-0")
        await store.delivered("c", "10-0")  # the marker does not move back
        assert await store.client.get(f"{redis_prefix}:{{c}}:delivered") == "12-0"
    finally:
        await store.aclose()


async def test_a_delivered_mark_names_the_turn_delivered_not_the_chats_newest(
    redis_server: str, redis_prefix: str
) -> None:
    """With overlapping jobs a later turn can be stored while an earlier one's reply is being
    sent: marking the earlier one must leave the later one to be sent again after a crash."""
    store = JournaledRedisStore(aioredis.Redis.from_url(redis_server, decode_responses=True))
    store.prefix = redis_prefix

    async def store_in(job_id: str, turn_id: str) -> None:
        token = current_job.set(Job(job_id, "c", {}, 0))
        try:
            reply = Turn("assistant", f"reply {turn_id}", meta={"turn": turn_id})
            await store.append("c", Turn("user", "q"), reply)
        finally:
            current_job.reset(token)

    try:
        await store_in("7-0", "first")
        await store_in("9-0", "second")  # e.g. messages 8 and 9, merged, stored as 9
        assert store.stored_as("unknown") is None
        first = store.stored_as("first")
        assert first == "7-0"
        assert store.stored_as("first") is None  # once
        await store.delivered("c", first)
        replay = await store.replay("c", "8-0")
        assert replay.reply is not None and replay.reply.text == "reply second"
        assert replay.stored_as == "9-0"  # still to send: the mark names 7-0
        assert await store.client.get(f"{redis_prefix}:{{c}}:delivered") == "7-0"
        second = store.stored_as("second")
        assert second == "9-0"
        await store.delivered("c", second)
        assert await store.replay("c", "8-0") == Replay(answered=True)
        await store.delivered("c", "7-0")  # a late mark of the earlier turn: no step back
        assert await store.client.get(f"{redis_prefix}:{{c}}:delivered") == "9-0"
    finally:
        await store.aclose()


async def test_delivered_marks_of_many_chats_share_one_request_beyond_their_appends(
    redis_server: str, redis_prefix: str
) -> None:
    """A delivered turn costs at most one round trip beyond its journaled append: the marks of
    chats delivered together go out in one request (issue 16), the generic channel's reply and
    mark with them; every chat's mark still names its own stored job."""
    sent = RoundTrips()
    store = JournaledRedisStore(counting_client(redis_server, sent), redis_prefix)
    chats = [f"c{i}" for i in range(20)]

    async def in_lane(chat: str, job_id: str, work: Callable[[], Awaitable[None]]) -> None:
        token = current_job.set(Job(job_id, chat, {}, 0, tenure=Tenure()))
        try:
            await work()
        finally:
            current_job.reset(token)

    def store_turn(chat: str) -> Callable[[], Awaitable[None]]:
        return lambda: store.append(chat, Turn("user", "q"), Turn("assistant", "a"))

    try:
        await store.client.ping()
        sent.count = 0
        await in_lane("lone", "3-0", store_turn("lone"))
        assert sent.count == 1  # the journaled append
        await in_lane("lone", "3-0", lambda: store.delivered("lone", "3-0"))
        assert sent.count == 2  # ... and one more for its mark
        assert await store.replay("lone", "3-0") == Replay(answered=True)

        await asyncio.gather(
            *(in_lane(c, f"{i + 5}-0", store_turn(c)) for i, c in enumerate(chats))
        )
        sent.count = 0
        marks = [
            in_lane(c, f"{i + 5}-0", lambda c=c, i=i: store.delivered(c, f"{i + 5}-0"))
            for i, c in enumerate(chats)
        ]
        replies = f"{redis_prefix}:replies"
        published = store.publish(("RPUSH", replies, "x"), store.mark("lone", "3-0"))
        await asyncio.gather(*marks, published)
        assert sent.count == 1  # was one request per chat
        delivered = await store.client.mget([f"{redis_prefix}:{{{c}}}:delivered" for c in chats])
        assert delivered == [f"{i + 5}-0" for i in range(len(chats))]
        assert await store.client.lrange(replies, 0, -1) == ["x"]
    finally:
        await store.aclose()


async def test_a_batcher_with_a_window_gathers_callers_of_several_loop_steps(
    redis_server: str, redis_prefix: str
) -> None:
    sent = RoundTrips()
    client = counting_client(redis_server, sent)
    batch = Batcher(client, window=1.0)  # long, so the steps below surely fall inside it
    key = f"{redis_prefix}:window"

    async def later(steps: int) -> list[object]:
        for _ in range(steps):
            await asyncio.sleep(0)
        return await batch.run(("INCR", key))

    try:
        await client.ping()
        sent.count = 0
        replies = await asyncio.gather(*(later(steps) for steps in range(5)))
        assert sent.count == 1  # five callers, five different steps, one request
        assert sorted(r for [r] in replies) == [1, 2, 3, 4, 5]
    finally:
        await client.aclose()


# --- batched requests ---


async def test_concurrent_callers_share_one_request_and_get_their_own_replies(
    redis_server: str, redis_prefix: str
) -> None:
    sent = RoundTrips()
    client = counting_client(redis_server, sent)  # the benchmark's request counter
    batch = Batcher(client)
    key = f"{redis_prefix}:batch"
    try:
        await client.ping()
        sent.count = 0
        replies = await asyncio.gather(
            *(batch.run(("INCRBY", key, n), ("GET", key)) for n in (1, 10, 100)),
            batch.run(("INCR", f"{redis_prefix}:other"), ("HGET", key, "f")),
        )
        assert sent.count == 1  # four callers, one request
        assert [r for r, _ in replies[:3]] == [1, 11, 111]  # in order, each its own
        assert [g for _, g in replies[:3]] == ["1", "11", "111"]
        incr, wrong_type = replies[3]
        assert incr == 1 and isinstance(wrong_type, ResponseError)  # only its caller sees it
        assert "WRONGTYPE" in str(wrong_type)

        sent.count = 0
        assert await batch.run(("GET", key)) == ["111"]  # a lone caller is not held back
        assert sent.count == 1
    finally:
        await client.aclose()


async def test_a_connection_error_fails_every_caller_of_the_batch() -> None:
    batch = Batcher(connect("redis://127.0.0.1:1/0"))
    results = await asyncio.gather(
        batch.run(("GET", "a")), batch.run(("GET", "b")), return_exceptions=True
    )
    assert all(isinstance(r, RedisConnectionError) for r in results), results
    await batch.client.aclose()


# --- connection URLs ---


def test_sentinel_urls_are_parsed() -> None:
    url = parse_sentinel_url(
        "redis+sentinel://:s3cret@s1:26379,s2:26380,s3/mymaster/2?sentinel_password=x"
    )
    assert url.hosts == (("s1", 26379), ("s2", 26380), ("s3", 26379))
    assert (url.service, url.db, url.password, url.sentinel_password) == (
        "mymaster",
        2,
        "s3cret",
        "x",
    )
    assert parse_sentinel_url("rediss+sentinel://h/svc").ssl
    assert parse_sentinel_url("redis+sentinel://h/svc").db == 0


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://:pw@h1:26379",
        "redis+sentinel://:pw@h1:x/svc",
        "redis+sentinel://:pw@h/a/b",
    ],
)
def test_bad_sentinel_urls_name_the_setting_and_hide_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_sentinel_url(url)
    assert "FMBOT_STORE" in str(info.value) and "pw" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://:pw@h1:26379",
        "redis+cluster://:pw@n1:6379/3",
        "redis://:pw@h:port/0",
        "redis://:pw@h:6379/zero",
        "redis://:pw@h:6379/0?no_such_option=1",
        "memcached://:pw@h",
    ],
)
def test_check_url_names_the_setting_it_was_given(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_url(url, "FMBOT_QUEUE_URL")
    assert str(info.value).startswith("FMBOT_QUEUE_URL=") and "pw" not in str(info.value)


def test_secret_query_parameters_are_masked_whatever_their_prefix() -> None:
    url = "redis+sentinel://:a@s1/m?sentinel_password=b&api_key=c&access_token=d&db_index=2"
    assert mask_url(url) == (
        "redis+sentinel://:****@s1/m?sentinel_password=****&api_key=****&access_token=****"
        "&db_index=2"
    )


async def test_connect_builds_a_sentinel_client_without_io() -> None:
    client = connect("redis+sentinel://127.0.0.1:1/mymaster")
    assert "Sentinel" in type(client.connection_pool).__name__
    await client.aclose()
    with pytest.raises(ConfigError):
        connect("mongodb://x")


# --- the echo model ---


async def test_echo_model_answers_streams_and_counts() -> None:
    model = EchoModel.from_spec("echo:?chunks=3")
    messages = [Message("system", "be brief"), Message("user", "hello there world")]
    chunks = [c async for c in model.generate(messages, GenerationOptions())]
    text = "".join(c for c in chunks if isinstance(c, str))
    assert text == "echo: hello there world"
    assert len([c for c in chunks if isinstance(c, str)]) == 3
    assert chunks[-1] == Usage(2 + 3 + 8, 4)
    assert await model.count_tokens(messages) == 13
    assert await model.respond(messages, GenerationOptions(max_tokens=2)) == "echo: hello"


def test_echo_specs() -> None:
    assert parse_echo_spec("echo:") == (0.0, 1)
    assert parse_echo_spec("echo:?delay=0.5&chunks=2") == (0.5, 2)
    check_text_model_spec("echo:?delay=0.5")
    for bad in ("echo:x", "echo:?delay=-1", "echo:?chunks=0", "echo:?speed=2"):
        with pytest.raises(ConfigError, match="FMBOT_TEXT_MODEL"):
            check_text_model_spec(bad)


async def test_the_registry_creates_the_echo_model() -> None:
    model = await get_text_model(
        Settings(FMBOT_TEXT_MODEL="echo:?delay=0.01", FMBOT_CONTEXT_TOKENS=999)
    )
    try:
        assert isinstance(model, EchoModel)
        assert (model.delay, model.context_window) == (0.01, 999)
    finally:
        await close_models()

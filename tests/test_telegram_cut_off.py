"""A reply cut off mid-way (a shutdown past TELEGRAM_SHUTDOWN_GRACE) leaves the chat matching
what happens next: with a queue the job's next run answers and the cut-off preview is deleted;
without one (``--role all``) the user gets the partial answer marked stopped, as it is stored.

Real Redis, the fake Bot API server (tests/fakes/telegram_server.py), real processes for
``--role all``. The Bot API call the reply is making when it is cut off is held unanswered (a
network that stalls), so the reply is reliably mid-way when the shutdown comes.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.telegram.app import TelegramApp, make_bot
from adapters.telegram.ingress import PollingIngress
from adapters.telegram.replies import stopped_text
from adapters.telegram.worker import TelegramWorker
from bot.dialog import DialogManager
from bot.models.echo import EchoModel
from bot.prompts.library import PromptLibrary
from bot.queue import Ingress, QueueKeys
from bot.queue.journal import JournaledRedisStore
from bot.redis.connect import connect
from bot.stores import open_store
from tests.fakes.telegram_server import BOT_USERNAME, FakeTelegram
from tests.test_telegram_roles import (
    LEASE_MS,
    PARTITIONS,
    START,
    base_env,
    exited,
    fmbot,
    texts,
    tg_settings,
)

# Autouse: no TELEGRAM_/FMBOT_ settings of the environment leak in.
from tests.test_telegram_roles import _no_telegram_env as _no_telegram_env

MENTION = f"@{BOT_USERNAME}"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


async def test_a_group_reply_cut_off_by_a_shutdown_leaves_only_the_next_owners_answer(
    fake: FakeTelegram, prompts_dir: Path, redis_server: str, redis_prefix: str
) -> None:
    bob = fake.user(3101, "Bob")
    group = fake.group(-100910)
    keys = QueueKeys(redis_prefix, PARTITIONS)
    tg = tg_settings(fake)
    queue = connect(redis_server, socket_timeout=2)

    def worker(name: str) -> TelegramWorker:
        manager = DialogManager(
            JournaledRedisStore(queue, redis_prefix),
            EchoModel(chunks=4),  # a first piece (the preview message), then the rest
            PromptLibrary(prompts_dir),
        )
        return TelegramWorker(TelegramApp(manager, tg), queue, keys, lease_ms=LEASE_MS, name=name)

    first, second = worker("first"), worker("second")
    bot = make_bot(tg)
    poller = PollingIngress(bot, Ingress(queue, keys), timeout=1, retry_cap=0.5)
    polling = asyncio.create_task(poller.run())
    running = [asyncio.create_task(first.run())]
    try:
        fake.hold_next("editMessageText")  # the final text replacing the preview stalls
        fake.push_text(group, bob, f"{MENTION} tell me a long story")
        await fake.wait_for(lambda: bool(fake.held), 30)
        [preview] = fake.bot_messages(group["id"])  # the partial preview is on screen
        # A second worker is up as the first shuts down past its grace: it runs the job again.
        running.append(asyncio.create_task(second.run()))
        await asyncio.wait_for(first.stop(0.3), 30)
        await asyncio.wait_for(running[0], 30)
        await fake.wait_for(
            lambda: (
                [m["message_id"] for m in fake.bot_messages(group["id"])]
                not in ([], [preview["message_id"]])
            ),
            30,
        )
        await asyncio.sleep(1.0)  # a second answer would arrive now
        history = await second.store.read(f"tg:{group['id']}")
        assert [t.role for t in history] == ["user", "assistant"]
        assert texts(fake, group["id"]) == [history[-1].text]  # one message: the whole reply
        assert "(stopped)" not in history[-1].text
        deleted = fake.calls("deleteMessage")
        assert [int(c["message_id"]) for c in deleted] == [preview["message_id"]]
    finally:
        poller.request_stop()
        await asyncio.wait_for(second.stop(5), 30)
        await asyncio.wait_for(asyncio.gather(polling, *running, return_exceptions=True), 30)
        await bot.session.close()
        await first.app.bot.session.close()
        await second.app.bot.session.close()
        await queue.aclose()


async def test_role_all_sends_a_private_reply_cut_off_by_sigterm_marked_stopped(
    fake: FakeTelegram, tmp_path: Path
) -> None:
    """aiogram has confirmed the update and the partial answer is stored as stopped: the user
    gets that partial answer too (a draft alone would vanish), marked stopped."""
    alice = fake.user(3102, "Alice")
    chat = fake.private_chat(alice)
    env = base_env(
        fake,
        tmp_path,
        FMBOT_TEXT_MODEL="echo:?chunks=4",
        TELEGRAM_SHUTDOWN_GRACE="0.3",
        TELEGRAM_EDIT_INTERVAL="0.25",
    )
    fake.hold_next("sendMessageDraft")  # the first preview (a draft) stalls: mid-reply
    fake.push_text(chat, alice, "tell me a long story")
    proc = fmbot(env=env, cwd=tmp_path)
    try:
        try:
            await fake.wait_for(lambda: bool(fake.held), START)
        except TimeoutError:
            proc.kill()
            pytest.fail(f"no draft; output: {proc.communicate()[1].decode()}")
        assert not fake.bot_messages(chat["id"])
        proc.send_signal(signal.SIGTERM)
        assert await exited(proc, 30) == 0, proc.communicate()[1].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    store = await open_store(f"sqlite:///{tmp_path / 'home' / 'fmbot.db'}")
    try:
        history = await store.read(f"tg:{alice['id']}")
    finally:
        await store.aclose()
    assert [t.role for t in history] == ["user", "assistant"]
    assert history[-1].meta.get("status") == "stopped"
    partial = history[-1].text
    assert partial and "echo: tell me a long story".startswith(partial)
    assert partial != "echo: tell me a long story"  # cut off indeed
    assert texts(fake, chat["id"]) == [stopped_text(partial)]

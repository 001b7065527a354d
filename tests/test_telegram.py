"""The Telegram channel end to end: aiogram's real Bot, Dispatcher and AiohttpSession, polling a
fake Bot API server (tests/fakes/telegram_server.py) over a real DialogManager and store."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import warnings
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import telegramify_markdown

from adapters.telegram import TelegramApp, TelegramSettings
from adapters.telegram.access import ADMINS_ONLY, REFUSAL
from adapters.telegram.handlers import NOTHING_TO_STOP
from adapters.telegram.runner import Runner
from adapters.telegram.splitting import utf16_len
from bot.dialog import VISION_SETUP_HINT, DialogManager
from bot.events import Message
from bot.limits import Limits, MemoryLimits
from bot.models.base import Chunk, GeneratedImage, GenerationOptions, ImageModel, TextModel
from bot.prompts.library import PromptLibrary
from bot.stores import DialogStore, open_store
from bot.stores.memory import MemoryStore
from tests.conftest import free_port
from tests.doubles import Recording, Scripted
from tests.fakes.base import Recorded
from tests.fakes.telegram_server import (
    BOT_USERNAME,
    CHANNEL_BOT,
    GROUP_ANONYMOUS_BOT,
    FakeTelegram,
    NotBotApi,
)
from tests.test_telegram_roles import base_env, exited, fmbot

MENTION = f"@{BOT_USERNAME}"
REPLY = ["Here is ", "the **answer**", " you asked", " for."]
REPLY_TEXT = "Here is the answer you asked for."  # REPLY after formatting
STICKER = {
    "file_id": "s1",
    "file_unique_id": "s1",
    "type": "regular",
    "width": 512,
    "height": 512,
    "is_animated": False,
    "is_video": False,
}


@pytest.fixture(autouse=True)
def _no_telegram_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TELEGRAM_"):
            monkeypatch.delenv(name)


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


class Painter(ImageModel):
    """A test image model: a few PNG-looking bytes per prompt, after a pause."""

    name = "painter"

    def __init__(self, pause: float = 0.3) -> None:
        self.pause = pause
        self.prompts: list[str] = []

    async def generate_image(self, prompt: str) -> GeneratedImage:
        self.prompts.append(prompt)
        await asyncio.sleep(self.pause)
        return GeneratedImage(b"\x89PNG\r\n\x1a\n" + prompt.encode(), "image/png")


class Chain(Scripted):
    """Scripted models one after another (each with its own pace)."""

    def __init__(self, *parts: Scripted) -> None:
        super().__init__([c for p in parts for c in p.chunks])
        self.parts = parts

    async def generate(
        self, messages: Sequence[Message], options: GenerationOptions
    ) -> AsyncIterator[Chunk]:
        for part in self.parts:
            async for chunk in part.generate(messages, options):
                if isinstance(chunk, str):
                    yield chunk


class Gated(Scripted):
    """Yields its first chunk, then waits for ``gate`` before the rest: a turn that stays in
    progress (its chat's lock held) until the test lets it finish."""

    def __init__(self, chunks: Sequence[str]) -> None:
        super().__init__(chunks)
        self.gate = asyncio.Event()

    async def generate(
        self, messages: Sequence[Message], options: GenerationOptions
    ) -> AsyncIterator[Chunk]:
        first = True
        async for chunk in super().generate(messages, options):
            if not first:
                await self.gate.wait()
            first = False
            yield chunk


@dataclass
class Running:
    fake: FakeTelegram
    model: Recording
    store: DialogStore
    app: TelegramApp
    runner: Runner
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.runner.request_stop()
        await asyncio.wait_for(self.task, 15)


@contextlib.asynccontextmanager
async def running(
    fake: FakeTelegram,
    prompts_dir: Path,
    model: TextModel,
    *,
    store: DialogStore | None = None,
    image_model: ImageModel | None = None,
    limits: Limits | None = None,
    handle_signals: bool = False,
    **env: Any,
) -> AsyncIterator[Running]:
    """The bot, long polling the fake, until the block ends."""
    store = store or MemoryStore()
    recording = model if isinstance(model, Recording) else Recording(model)
    manager = DialogManager(
        store,
        recording,
        PromptLibrary(prompts_dir),
        options=GenerationOptions(max_tokens=64),
        image_model=image_model,
        limits=limits,
    )
    values = {
        "TELEGRAM_BOT_TOKEN": fake.token,
        "TELEGRAM_API_URL": fake.base_url,
        "TELEGRAM_EDIT_INTERVAL": 0.25,
        **env,
    }
    settings = TelegramSettings(_env_file=None, **values)
    app = TelegramApp(manager, settings)
    runner = Runner(app, polling_timeout=1)
    task = asyncio.create_task(runner.run_polling(handle_signals=handle_signals))
    bot = Running(fake, recording, store, app, runner, task)
    try:
        await fake.wait_for(lambda: bool(fake.calls("getUpdates")) or task.done())
        if task.done():
            task.result()
        yield bot
    finally:
        if not task.done():
            await bot.stop()
        await store.aclose()


def texts(fake: FakeTelegram, chat_id: int) -> list[str]:
    return [m.get("text") or m.get("caption") or "" for m in fake.bot_messages(chat_id)]


async def wait_messages(fake: FakeTelegram, chat_id: int, count: int, within: float = 5) -> None:
    await fake.wait_for(lambda: len(fake.bot_messages(chat_id)) >= count, within)


def gaps(calls: Sequence[Recorded]) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(calls)]


def squash(text: str) -> str:
    return " ".join(text.split())


# --- delivery ------------------------------------------------------------------------------


async def test_get_updates_offsets_confirm_each_update_once(
    fake: FakeTelegram, prompts_dir: Path
) -> None:
    alice = fake.user(1001, "Alice")
    chat = fake.private_chat(alice)
    for i in range(3):
        fake.push_text(chat, alice, f"question {i}")
    last_id = fake.pending[-1]["update_id"]
    async with running(fake, prompts_dir, Scripted(REPLY)) as bot:
        await wait_messages(fake, chat["id"], 3)
        await fake.wait_for(lambda: not fake.pending)  # the next poll confirmed all three
        offsets = [c.get("offset") for c in fake.calls("getUpdates")]
        assert offsets[0] is None  # the first poll asks for everything unconfirmed
        assert last_id + 1 in offsets and all(o in (None, last_id + 1) for o in offsets)
        assert [m[-1].text for m in bot.model.requests] == [f"question {i}" for i in range(3)]
        # A later update is fetched with the same offset and answered once.
        fake.push_text(chat, alice, "one more")
        await wait_messages(fake, chat["id"], 4)
    assert texts(fake, chat["id"]) == [REPLY_TEXT] * 4
    assert len(bot.model.requests) == 4
    assert fake.calls("getUpdates")[-1]["offset"] == last_id + 2  # shutdown confirms the last
    assert not fake.pending


async def test_private_chat_streams_drafts_then_sends_the_final_message(
    fake: FakeTelegram, prompts_dir: Path
) -> None:
    alice = fake.user(1002, "Alice")
    chat = fake.private_chat(alice)
    chunks = ["Hello", " **world**", ", this", " is", " a", " streamed", " reply."]
    async with running(fake, prompts_dir, Scripted(chunks, pause=0.12)):
        fake.push_text(chat, alice, "hi")
        await wait_messages(fake, chat["id"], 1)
        fake.push_text(chat, alice, "again")
        await wait_messages(fake, chat["id"], 2)
    first_reply = [d for d in fake.drafts if d["draft_id"] == fake.drafts[0]["draft_id"]]
    assert len(first_reply) >= 2
    assert all(d["can_stop"] for d in fake.drafts)
    assert {d["draft_id"] for d in fake.drafts} != {0}
    assert len({d["draft_id"] for d in fake.drafts}) == 2  # one draft id per reply
    raw = "".join(chunks)
    previews = [d["text"] for d in first_reply]
    assert all(raw.startswith(p) for p in previews)  # plain model text, growing
    assert previews == sorted(previews, key=len) and len(set(previews)) == len(previews)
    first_id = first_reply[0]["draft_id"]
    draft_calls = [r for r in fake.recorded("sendMessageDraft") if r.body["draft_id"] == first_id]
    assert min(gaps(draft_calls[: len(first_reply)])) >= 0.25 - 0.03  # throttled
    sends = fake.recorded("sendMessage")
    assert len(sends) == 2 and not fake.calls("editMessageText")
    assert sends[0].at > draft_calls[len(first_reply) - 1].at  # the message follows the drafts
    final = fake.bot_messages(chat["id"])[0]
    assert final["text"] == "Hello world, this is a streamed reply."
    assert final["entities"] == [{"type": "bold", "offset": 6, "length": 5}]
    actions = fake.recorded("sendChatAction")
    assert actions and actions[0].body["action"] == "typing" and actions[0].at < draft_calls[0].at
    assert not fake.errors


async def test_group_edits_are_throttled_and_never_unchanged(
    fake: FakeTelegram, prompts_dir: Path
) -> None:
    fake.min_edit_interval = 0.2  # flood control: faster edits would get 429
    bob = fake.user(2001, "Bob")
    group = fake.group(-100200)
    # Fast chunks (several per interval), then slow ones, two of which leave the visible text
    # unchanged: editing then would be answered "message is not modified".
    fast = Scripted([f" word{i}" for i in range(10)], pause=0.05)
    slow = Scripted([" ", " nine", " ", " and **done**."], pause=0.3)
    chunks = [*fast.chunks, *slow.chunks]
    async with running(fake, prompts_dir, Chain(fast, slow)) as bot:
        question = fake.push_text(group, bob, f"{MENTION} count for me")
        await wait_messages(fake, group["id"], 1)
        await fake.wait_for(lambda: any("entities" in c for c in fake.calls("editMessageText")))
    sends, edits = fake.recorded("sendMessage"), fake.recorded("editMessageText")
    assert len(sends) == 1 and len(edits) >= 2
    assert sends[0].body["reply_parameters"]["message_id"] == question["message_id"]
    assert min(gaps([*sends, *edits])) >= 0.25 - 0.03
    assert not fake.errors  # no "message is not modified", no 429
    assert all("entities" not in e.body for e in edits[:-1])  # previews are plain text
    (message,) = fake.bot_messages(group["id"])
    expected = telegramify_markdown.convert("".join(chunks))[0].strip()
    assert message["text"] == expected and message["entities"][0]["type"] == "bold"
    assert bot.model.requests[0][-1].text == "count for me"  # the mention is not sent
    assert [t.role for t in await bot.store.read(f"tg:{group['id']}")] == ["user", "assistant"]


@pytest.mark.parametrize("where", ["group", "private"])
async def test_429_waits_retry_after_and_delivers_the_final_text(
    fake: FakeTelegram, prompts_dir: Path, where: str
) -> None:
    user = fake.user(2002, "Carol")
    chat = fake.group(-100300) if where == "group" else fake.private_chat(user)
    method = "editMessageText" if where == "group" else "sendMessage"
    fake.fail_next(
        method,
        429,
        "Too Many Requests: retry after 1",
        retry_after=1,
        when=lambda p: bool(p.get("entities")),  # the final, formatted message
    )
    async with running(fake, prompts_dir, Scripted(REPLY, pause=0.05)):
        fake.push_text(chat, user, f"{MENTION} question")
        await fake.wait_for(
            lambda: (
                texts(fake, chat["id"]) == [REPLY_TEXT]
                and bool(fake.bot_messages(chat["id"])[0].get("entities"))
            ),
            within=8,
        )
    assert [e[1] for e in fake.errors] == [429]
    formatted = [r for r in fake.recorded(method) if r.body.get("entities")]
    assert len(formatted) == 2 and formatted[1].at - formatted[0].at >= 1.0


async def test_a_10000_character_reply_is_split_into_valid_messages(
    fake: FakeTelegram, prompts_dir: Path
) -> None:
    paragraphs = [
        " ".join(f"Sentence {p}.{s} has **bold{p}x{s}** and plain words." for s in range(6))
        for p in range(36)
    ]
    markdown = "\n\n".join(paragraphs)
    assert len(markdown) > 10_000
    chunks = [markdown[i : i + 700] for i in range(0, len(markdown), 700)]
    alice = fake.user(1003, "Alice")
    chat = fake.private_chat(alice)
    async with running(fake, prompts_dir, Scripted(chunks)):
        fake.push_text(chat, alice, "write a lot")
        await wait_messages(fake, chat["id"], 3)
        await asyncio.sleep(0.3)  # any further part would have arrived by now
    messages = fake.bot_messages(chat["id"])
    assert len(messages) == 3
    assert all(utf16_len(m["text"]) <= 4096 for m in messages)
    expected = telegramify_markdown.convert(markdown)[0]
    assert squash(" ".join(m["text"] for m in messages)) == squash(expected)
    for m in messages:
        assert m["text"].endswith("words.")  # cut at a paragraph end, not mid-sentence
        bold = [m["text"][e["offset"] : e["offset"] + e["length"]] for e in m["entities"]]
        assert bold and all(b.startswith("bold") and "x" in b for b in bold)
    assert sum(len(m["entities"]) for m in messages) == 36 * 6
    assert not fake.errors


async def test_rejected_formatting_is_resent_as_plain_text(
    fake: FakeTelegram, prompts_dir: Path
) -> None:
    description = (
        "Bad Request: can't parse entities: Can't find end of Bold entity at byte offset 8"
    )
    fake.fail_next("sendMessage", 400, description, when=lambda p: bool(p.get("entities")))
    alice = fake.user(1004, "Alice")
    chat = fake.private_chat(alice)
    async with running(fake, prompts_dir, Scripted(REPLY)):
        fake.push_text(chat, alice, "format this")
        await wait_messages(fake, chat["id"], 1)
    (message,) = fake.bot_messages(chat["id"])
    assert message["text"] == REPLY_TEXT and "entities" not in message
    sends = fake.calls("sendMessage")
    assert len(sends) == 2 and sends[0]["entities"] and "entities" not in sends[1]
    assert fake.errors == [("sendMessage", 400, description)]


# --- commands ------------------------------------------------------------------------------


async def test_image_command_sends_a_photo(fake: FakeTelegram, prompts_dir: Path) -> None:
    painter = Painter(pause=0.3)
    alice = fake.user(1005, "Alice")
    chat = fake.private_chat(alice)
    async with running(fake, prompts_dir, Scripted(REPLY), image_model=painter) as bot:
        fake.push_text(chat, alice, "/image a red square")
        await fake.wait_for(lambda: bool(fake.calls("sendPhoto")))
    assert painter.prompts == ["a red square"]
    notice, photo = fake.bot_messages(chat["id"])
    assert "a red square" in notice["text"]
    assert photo["caption"] == "a red square" and photo["photo"][0]["file_size"] > 0
    assert fake.photos_received == [b"\x89PNG\r\n\x1a\na red square"]
    actions = [r for r in fake.recorded("sendChatAction") if r.body["action"] == "upload_photo"]
    assert actions and actions[0].at < fake.recorded("sendPhoto")[0].at
    assert not bot.model.requests  # /image goes straight to the image model


async def test_a_progress_notice_telegram_refuses_does_not_stop_the_picture(
    fake: FakeTelegram, prompts_dir: Path
) -> None:
    """A group may let the bot send photos but not text: the lost "Generating an image" line
    must not cancel the turn (it would be stored as stopped and the picture never sent)."""
    fake.fail_next(
        "sendMessage", 400, "Bad Request: not enough rights to send text messages to the chat"
    )
    bob = fake.user(1015, "Bob")
    group = fake.group(-101500)
    async with running(fake, prompts_dir, Scripted(REPLY), image_model=Painter()) as bot:
        fake.push_text(group, bob, f"/image@{BOT_USERNAME} a red square")
        await fake.wait_for(lambda: bool(fake.calls("sendPhoto")))
    (photo,) = fake.bot_messages(group["id"])
    assert photo["caption"] == "a red square"
    assert [e[1] for e in fake.errors] == [400]
    (_, answer) = await bot.store.read(f"tg:{group['id']}")
    assert answer.meta["status"] == "complete"


async def test_stop_command_cancels_the_reply_and_keeps_the_partial_text(
    fake: FakeTelegram, prompts_dir: Path
) -> None:
    model = Scripted([f"part{i} " for i in range(40)], pause=0.1)
    alice = fake.user(1006, "Alice")
    chat = fake.private_chat(alice)
    async with running(fake, prompts_dir, model) as bot:
        fake.push_text(chat, alice, "/stop")
        await wait_messages(fake, chat["id"], 1)
        assert texts(fake, chat["id"]) == [NOTHING_TO_STOP]
        fake.push_text(chat, alice, "tell a long story")
        await fake.wait_for(lambda: len(fake.drafts) >= 2)
        fake.push_text(chat, alice, "/stop")
        await wait_messages(fake, chat["id"], 2)
    final = texts(fake, chat["id"])[1]
    assert final.startswith("part0 part1") and final.endswith("… (stopped)")
    assert model.closed
    (_, bot_turn) = await bot.store.read(f"tg:{chat['id']}")
    assert bot_turn.meta["status"] == "stopped"
    assert final == f"{bot_turn.text.rstrip()} … (stopped)"  # what was stored is what was shown
    assert len(bot.model.requests) == 1


async def test_stopped_message_generation_cancels_the_matching_draft(
    fake: FakeTelegram, prompts_dir: Path
) -> None:
    model = Scripted([f"word{i} " for i in range(40)], pause=0.1)
    alice = fake.user(1007, "Alice")
    chat = fake.private_chat(alice)
    async with running(fake, prompts_dir, model) as bot:
        fake.push_text(chat, alice, "go on")
        await fake.wait_for(lambda: len(fake.drafts) >= 2)
        draft_id = fake.drafts[0]["draft_id"]
        fake.push_stopped(chat, draft_id + 1)  # another draft: nothing happens
        await asyncio.sleep(0.3)
        assert not fake.bot_messages(chat["id"])
        fake.push_stopped(chat, draft_id)
        await wait_messages(fake, chat["id"], 1)
    (final,) = texts(fake, chat["id"])
    assert final.startswith("word0 ") and final.endswith("(stopped)")
    assert "word39" not in final and model.closed
    assert (await bot.store.read(f"tg:{chat['id']}"))[1].meta["status"] == "stopped"


async def test_forget_deletes_the_chat_and_is_for_admins_in_groups(
    fake: FakeTelegram, prompts_dir: Path
) -> None:
    alice, bob = fake.user(1008, "Alice"), fake.user(2008, "Bob")
    chat = fake.private_chat(alice)
    group = fake.group(-100800)
    async with running(fake, prompts_dir, Scripted(REPLY), TELEGRAM_ADMINS="1008") as bot:
        fake.push_text(chat, alice, "remember me")
        fake.push_text(group, bob, f"{MENTION} remember us")
        await wait_messages(fake, chat["id"], 1)
        await wait_messages(fake, group["id"], 1)
        await bot.store.set_state(f"tg:{chat['id']}", mode="default")
        fake.push_text(chat, alice, "/forget")
        fake.push_text(group, bob, f"/forget@{BOT_USERNAME}")
        await wait_messages(fake, chat["id"], 2)
        await wait_messages(fake, group["id"], 2)
    assert "Deleted everything" in texts(fake, chat["id"])[1]
    assert await bot.store.read(f"tg:{chat['id']}") == []
    assert await bot.store.get_state(f"tg:{chat['id']}") == {}
    assert texts(fake, group["id"])[1] == ADMINS_ONLY  # Bob is not an admin
    assert len(await bot.store.read(f"tg:{group['id']}")) == 2
    assert len(bot.model.requests) == 2


async def test_mode_keyboard_switches_the_template(fake: FakeTelegram, prompts_dir: Path) -> None:
    alice = fake.user(1009, "Alice")
    chat = fake.private_chat(alice)
    async with running(fake, prompts_dir, Scripted(REPLY)) as bot:
        manager = bot.app.manager
        other = next(t.name for t in manager.prompts.all() if t.name != "default")
        fake.push_text(chat, alice, "/mode")
        await wait_messages(fake, chat["id"], 1)
        menu = fake.bot_messages(chat["id"])[0]
        buttons = [row[0] for row in menu["reply_markup"]["inline_keyboard"]]
        assert "✓ default" in [b["text"] for b in buttons]
        query = fake.push_callback(alice, menu, f"mode:{other}")
        await fake.wait_for(lambda: fake.callback_queries[query]["answer"] is not None)
        await fake.wait_for(lambda: bool(fake.calls("editMessageText")))
    assert (await manager.mode_of(f"tg:{chat['id']}")).name == other
    assert other in fake.callback_queries[query]["answer"]["text"]
    ticks = [b["text"] for row in menu["reply_markup"]["inline_keyboard"] for b in row]
    assert f"✓ {other}" in ticks  # the menu was edited in place
    assert not bot.model.requests


async def test_a_mode_button_is_answered_at_once_while_a_turn_runs(
    fake: FakeTelegram, prompts_dir: Path
) -> None:
    alice = fake.user(1029, "Alice")
    chat = fake.private_chat(alice)
    model = Gated(REPLY)
    async with running(fake, prompts_dir, model) as bot:
        manager = bot.app.manager
        other = next(t.name for t in manager.prompts.modes() if t.name != "default")
        fake.push_text(chat, alice, "/mode")
        await wait_messages(fake, chat["id"], 1)
        menu = fake.bot_messages(chat["id"])[0]
        fake.push_text(chat, alice, "a question")
        await fake.wait_for(lambda: bool(fake.drafts))  # the turn runs, holding the chat
        query = fake.push_callback(alice, menu, f"mode:{other}")
        with contextlib.suppress(TimeoutError):  # a bot that answers late fails below
            await fake.wait_for(lambda: fake.callback_queries[query]["answer"] is not None)
        model.gate.set()
        await wait_messages(fake, chat["id"], 2)
        await fake.wait_for(lambda: bool(fake.calls("editMessageText")))
    names = [r.path.rpartition("/")[2] for r in fake.requests]
    order = [n for n in names if n in ("answerCallbackQuery", "sendMessage")]
    # The menu, the button's answer, then the turn's reply: not the answer after the reply.
    assert order == ["sendMessage", "answerCallbackQuery", "sendMessage"]
    assert other in fake.callback_queries[query]["answer"]["text"]
    assert texts(fake, chat["id"])[1] == REPLY_TEXT
    # The switch waited for the turn (which was stored under the old template), then applied.
    assert (await manager.mode_of(f"tg:{chat['id']}")).name == other
    assert (await bot.store.read(f"tg:{chat['id']}"))[1].meta["mode"] == "default"
    edited = fake.bot_messages(chat["id"])[0]
    assert edited["text"].startswith(f"Switched to {other!r}")
    ticks = [b["text"] for row in edited["reply_markup"]["inline_keyboard"] for b in row]
    assert f"✓ {other}" in ticks


async def test_an_unknown_mode_name_is_cut_short_in_the_answer(
    fake: FakeTelegram, prompts_dir: Path
) -> None:
    alice = fake.user(1019, "Alice")
    chat = fake.private_chat(alice)
    async with running(fake, prompts_dir, Scripted(REPLY)) as bot:
        fake.push_text(chat, alice, "/mode " + "x" * 5000)
        await wait_messages(fake, chat["id"], 1)
    (answer,) = texts(fake, chat["id"])
    names = [t.name for t in bot.app.manager.prompts.modes()]
    # The manager's answer, which quotes only the start of a long name.
    assert answer == f"⚠️ No template named '{'x' * 64}…'. Available: {', '.join(names)}."
    assert (await bot.app.manager.mode_of(f"tg:{chat['id']}")).name == "default"
    assert not bot.model.requests


# --- who and where -------------------------------------------------------------------------


async def test_allow_list_refuses_strangers_without_a_model_call(
    fake: FakeTelegram, prompts_dir: Path
) -> None:
    alice = fake.user(1010, "Alice", username="Alice_W")
    dave = fake.user(2010, "Dave")
    mallory = fake.user(3010, "Mallory", username="mallory")
    chats = [fake.private_chat(u) for u in (alice, dave, mallory)]
    allowed = "@alice_w, 2010"
    async with running(fake, prompts_dir, Scripted(REPLY), TELEGRAM_ALLOWED_USERS=allowed) as bot:
        fake.push_text(chats[2], mallory, "let me in")
        await wait_messages(fake, mallory["id"], 1)
        assert not bot.model.requests
        fake.push_text(chats[0], alice, "hello")
        fake.push_text(chats[1], dave, "hello")
        await wait_messages(fake, alice["id"], 1)
        await wait_messages(fake, dave["id"], 1)
    assert texts(fake, mallory["id"]) == [REFUSAL]
    assert texts(fake, alice["id"]) == texts(fake, dave["id"]) == [REPLY_TEXT]
    assert len(bot.model.requests) == 2
    assert await bot.store.read(f"tg:{mallory['id']}") == []


async def test_groups_answer_only_mentions_replies_and_commands(
    fake: FakeTelegram, prompts_dir: Path
) -> None:
    bob = fake.user(2011, "Bob")
    group = fake.group(-101100)
    async with running(fake, prompts_dir, Scripted(REPLY)) as bot:
        fake.push_text(group, bob, "hello everyone")
        fake.push_message(group, bob, sticker=STICKER)
        fake.push_text(group, bob, "/help@someotherbot")
        fake.push_text(group, bob, f"{MENTION} first question")
        await wait_messages(fake, group["id"], 1)
        answer = fake.bot_messages(group["id"])[0]
        fake.push_text(group, bob, "and a follow-up", reply_to=answer)
        await wait_messages(fake, group["id"], 2)
        fake.push_text(group, bob, "/help")
        await wait_messages(fake, group["id"], 3)
        await asyncio.sleep(0.2)
    assert [m[-1].text for m in bot.model.requests] == ["first question", "and a follow-up"]
    help_text = texts(fake, group["id"])[2]
    assert "/stop" in help_text and "mention me" in help_text
    assert len(fake.bot_messages(group["id"])) == 3


async def test_groups_leave_other_bots_bare_commands_alone(
    fake: FakeTelegram, prompts_dir: Path
) -> None:
    bob = fake.user(2017, "Bob")
    group = fake.group(-101700)
    async with running(fake, prompts_dir, Scripted(REPLY)) as bot:
        fake.push_text(group, bob, "/weather London")  # another bot's command
        fake.push_text(group, bob, "/usage")  # one of ours, without @suffix
        await wait_messages(fake, group["id"], 1)
        fake.push_text(group, bob, f"/weather@{BOT_USERNAME} Paris")  # addressed to us
        await wait_messages(fake, group["id"], 2)
        await asyncio.sleep(0.2)
    answers = texts(fake, group["id"])
    assert len(answers) == 2 and answers[0].startswith("Used in this chat")
    assert [m[-1].text for m in bot.model.requests] == [f"/weather@{BOT_USERNAME} Paris"]


@pytest.mark.parametrize("allowed", [None, "2018"])
async def test_group_messages_sent_on_behalf_of_a_chat_are_never_refused(
    fake: FakeTelegram, prompts_dir: Path, allowed: str | None
) -> None:
    bob = fake.user(2018, "Bob")
    group = fake.group(-101800)
    channel = {"id": -1001800, "type": "channel", "title": "News"}
    env = {"TELEGRAM_ALLOWED_USERS": allowed} if allowed else {}
    async with running(fake, prompts_dir, Scripted(REPLY), **env) as bot:
        # No "from": posted as the channel, and as the group itself (an anonymous admin).
        fake.push_text(group, None, f"{MENTION} from the channel", sender_chat=channel)
        fake.push_text(group, None, f"{MENTION} from an admin", sender_chat=group)
        fake.push_text(group, bob, f"{MENTION} from Bob")
        await wait_messages(fake, group["id"], 3 if allowed is None else 1)
        await asyncio.sleep(0.2)
    assert REFUSAL not in texts(fake, group["id"])
    asked = [m[-1].text for m in bot.model.requests]
    if allowed is None:  # an open bot answers them like any group message
        assert asked == ["from the channel", "from an admin", "from Bob"]
        assert texts(fake, group["id"]) == [REPLY_TEXT] * 3
    else:  # an allow-list cannot place them: ignored, without a word
        assert asked == ["from Bob"] and texts(fake, group["id"]) == [REPLY_TEXT]
    # Telegram's stand-in "from" was there all along (the fake is faithful): it names no one.
    senders = [fake.messages[group["id"]][n].get("from") for n in (1, 2)]
    assert senders == [CHANNEL_BOT, GROUP_ANONYMOUS_BOT]


async def test_anonymous_admins_of_different_groups_have_limits_of_their_own(
    fake: FakeTelegram, prompts_dir: Path
) -> None:
    """Every anonymous admin's message comes "from" GroupAnonymousBot: counted under that one
    user, the first group's admin would use up the limit of every other group's."""
    first, second = fake.group(-101900, "First"), fake.group(-101901, "Second")
    bob = fake.user(2019, "Bob")
    limits = MemoryLimits(rate_per_minute=1)
    async with running(fake, prompts_dir, Scripted(REPLY), limits=limits) as bot:
        fake.push_text(first, None, f"{MENTION} from the first admin", sender_chat=first)
        await wait_messages(fake, first["id"], 1)
        fake.push_text(second, None, f"{MENTION} from the second admin", sender_chat=second)
        fake.push_text(first, bob, f"{MENTION} from Bob")
        await wait_messages(fake, second["id"], 1)
        await wait_messages(fake, first["id"], 2)
    assert texts(fake, second["id"]) == [REPLY_TEXT]
    assert texts(fake, first["id"]) == [REPLY_TEXT] * 2
    assert len(bot.model.requests) == 3
    # Counted under each sender chat (and Bob under himself), never under the stand-in user.
    used = [
        (await limits.status(label)).tokens_today
        for label in ("tg:-101900", "tg:-101901", "tg:2019", f"tg:{GROUP_ANONYMOUS_BOT['id']}")
    ]
    assert used[:3] == [used[0]] * 3 and used[0] > 0 and used[3] == 0


async def test_forum_topics_have_their_own_history_and_replies(
    fake: FakeTelegram, prompts_dir: Path
) -> None:
    bob = fake.user(2012, "Bob")
    forum = fake.group(-101200, "Forum", forum=True)
    topic_a = fake.create_topic(forum, "Cats", bob)
    topic_b = fake.create_topic(forum, "Dogs", bob)
    topic_c = fake.create_topic(forum, "Made by the bot", fake.bot_user)
    async with running(fake, prompts_dir, Scripted(REPLY)) as bot:
        # Topic messages "reply" to the topic's first message: that is not a reply to the bot.
        fake.push_text(forum, bob, "just chatting", thread_id=topic_a)
        fake.push_text(forum, bob, "just chatting", thread_id=topic_c)
        fake.push_text(forum, bob, f"{MENTION} about cats", thread_id=topic_a)
        fake.push_text(forum, bob, f"{MENTION} about dogs", thread_id=topic_b)
        await wait_messages(fake, forum["id"], 3)  # with the service message creating topic C
        await asyncio.sleep(0.2)
    replies = [m for m in fake.bot_messages(forum["id"]) if "text" in m]
    assert sorted(m["message_thread_id"] for m in replies) == sorted([topic_a, topic_b])
    assert all(m["is_topic_message"] for m in replies)
    assert all(c.get("message_thread_id") in (topic_a, topic_b) for c in fake.calls("sendMessage"))
    cats = await bot.store.read(f"tg:{forum['id']}:{topic_a}")
    dogs = await bot.store.read(f"tg:{forum['id']}:{topic_b}")
    assert (cats[0].text, dogs[0].text) == ("about cats", "about dogs")
    assert len(bot.model.requests) == 2


async def test_stickers_voice_files_and_photos_get_a_short_answer(
    fake: FakeTelegram, prompts_dir: Path
) -> None:
    alice = fake.user(1013, "Alice")
    chat = fake.private_chat(alice)
    file = {"file_id": "f1", "file_unique_id": "u1"}
    async with running(fake, prompts_dir, Scripted(REPLY)) as bot:
        fake.push_message(chat, alice, sticker=STICKER)
        fake.push_message(chat, alice, voice={**file, "duration": 3})
        fake.push_message(chat, alice, document={**file, "file_name": "a.pdf"})
        fake.push_message(chat, alice, photo=[{**file, "width": 9, "height": 9}], caption="look")
        await wait_messages(fake, chat["id"], 4)
        fake.push_text(chat, alice, "still there?")
        await wait_messages(fake, chat["id"], 5)
    answers = texts(fake, chat["id"])
    short = answers[:4]  # each update runs on its own: in any order
    for word in ("sticker", "voice", "files"):
        assert sum(word in a for a in short) == 1, word
    # A photo is a question for the vision model, which this bot lacks: the setup hint.
    assert "⚠️ " + VISION_SETUP_HINT in short
    assert answers[4] == REPLY_TEXT and len(bot.model.requests) == 1
    assert fake.downloads == []


# --- lifecycle -----------------------------------------------------------------------------


async def test_shutdown_finishes_the_reply_in_progress(
    fake: FakeTelegram, prompts_dir: Path, tmp_path: Path
) -> None:
    store = await open_store(f"sqlite:///{tmp_path / 'tg.db'}")
    alice = fake.user(1014, "Alice")
    chat = fake.private_chat(alice)
    chunks = [f"step{i} " for i in range(10)]
    async with running(
        fake, prompts_dir, Scripted(chunks, pause=0.15), store=store, handle_signals=True
    ) as bot:
        fake.push_text(chat, alice, "slow question")
        handled_id = fake.pending[-1]["update_id"]
        await fake.wait_for(lambda: bool(fake.drafts))
        # The runner's handler is installed (else SIGTERM would end the test process).
        assert getattr(signal.getsignal(signal.SIGTERM), "__name__", "") == "_sighandler_noop"
        polls_before = len(fake.calls("getUpdates"))
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.1)
        fake.push_text(chat, alice, "sent during the shutdown")
        later_id = fake.pending[-1]["update_id"]
        await asyncio.wait_for(bot.task, 10)
        ended = asyncio.get_running_loop().time()
    (final,) = fake.bot_messages(chat["id"])
    assert final["text"] == "".join(chunks).strip()  # complete, not cut off
    assert fake.recorded("sendMessage")[0].at < ended
    assert [m[-1].text for m in bot.model.requests] == ["slow question"]
    # After the signal: no more long polls, only the call confirming what was handled.
    after = fake.calls("getUpdates")[polls_before:]
    assert after == [{"offset": handled_id + 1, "limit": 1, "timeout": 0}]
    assert [u["update_id"] for u in fake.pending] == [later_id]  # kept for the next start
    assert max(fake.confirmed) == handled_id + 1
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


async def test_webhook_mode_checks_the_secret_and_answers(
    fake: FakeTelegram, prompts_dir: Path
) -> None:
    alice = fake.user(1015, "Alice")
    chat = fake.private_chat(alice)
    async with webhook_running(fake, prompts_dir) as hook:
        registered = fake.calls("setWebhook")[0]
        secret = hook.headers["X-Telegram-Bot-Api-Secret-Token"]
        assert registered["url"] == hook.url and registered["secret_token"] == secret
        assert "stopped_message_generation" in registered["allowed_updates"]
        assert fake.token not in secret
        forged = {"message_id": 1, "date": 0, "chat": chat, "from": alice, "text": "hi"}
        update = {"update_id": 1, "message": forged}
        for headers in ({}, {"X-Telegram-Bot-Api-Secret-Token": "wrong"}):
            async with hook.client.post(hook.url, json=update, headers=headers) as response:
                assert response.status == 401
        fake.push_text(chat, alice, "via webhook")
        await wait_messages(fake, chat["id"], 1)
        assert texts(fake, chat["id"]) == [REPLY_TEXT]
        assert all(status == 200 for _, status in fake.webhook_deliveries)
    assert not fake.calls("getUpdates")


@contextlib.asynccontextmanager
async def webhook_running(fake: FakeTelegram, prompts_dir: Path) -> AsyncIterator[Webhook]:
    """The bot in webhook mode on a free port, until the block ends."""
    port = free_port()
    manager = DialogManager(MemoryStore(), Recording(Scripted(REPLY)), PromptLibrary(prompts_dir))
    settings = TelegramSettings(
        _env_file=None, TELEGRAM_BOT_TOKEN=fake.token, TELEGRAM_API_URL=fake.base_url
    )
    runner = Runner(TelegramApp(manager, settings))
    url = f"http://127.0.0.1:{port}/telegram/hook"
    task = asyncio.create_task(runner.run_webhook(url, "127.0.0.1", port, handle_signals=False))
    try:
        await fake.wait_for(lambda: fake.webhook is not None or task.done())
        if task.done():
            task.result()
        async with aiohttp.ClientSession() as client:
            yield Webhook(client, url, {"X-Telegram-Bot-Api-Secret-Token": settings.secret_token()})
    finally:
        runner.request_stop()
        await asyncio.wait_for(task, 10)


@dataclass
class Webhook:
    client: aiohttp.ClientSession
    url: str
    headers: dict[str, str]

    async def post(self, body: bytes) -> int:
        headers = {**self.headers, "Content-Type": "application/json"}
        async with self.client.post(self.url, data=body, headers=headers) as response:
            return response.status


async def test_webhook_answers_400_to_a_body_that_is_not_an_update(
    fake: FakeTelegram, prompts_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    alice = fake.user(1020, "Alice")
    chat = fake.private_chat(alice)
    secret = "PRIVATE-USER-WORDS"
    async with webhook_running(fake, prompts_dir) as hook:
        caplog.clear()
        assert await hook.post(b'{"update_id": 5, "message": {"text": "' + secret.encode()) == 400
        assert await hook.post(b'{"message": {"text": "' + secret.encode() + b'"}}') == 400
        fake.push_text(chat, alice, "still there?")
        await wait_messages(fake, chat["id"], 1)
    bad = [r for r in caplog.records if "no update" in r.getMessage()]
    assert len(bad) == 2 and all(r.exc_info is None and "\n" not in r.getMessage() for r in bad)
    assert "invalid JSON" in bad[0].getMessage() and "update_id" in bad[1].getMessage()
    assert secret not in caplog.text and "Traceback" not in caplog.text
    assert "Error handling request" not in caplog.text


async def test_an_update_of_an_unknown_type_is_skipped_without_logging_its_content(
    fake: FakeTelegram, prompts_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    alice = fake.user(1021, "Alice")
    chat = fake.private_chat(alice)
    secret = "PRIVATE-USER-WORDS"
    update = {"update_id": 4321, "future_thing": {"text": secret, "from": alice}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with webhook_running(fake, prompts_dir) as hook:
            assert await hook.post(json.dumps(update).encode()) == 200
            fake.push_text(chat, alice, "still there?")  # handled after the unknown one
            await wait_messages(fake, chat["id"], 1)
    assert all(secret not in str(w.message) for w in caught)
    assert not [w for w in caught if "unknown update type" in str(w.message)]
    assert secret not in caplog.text
    assert "skipped update 4321 of a type this aiogram does not know (future_thing)" in caplog.text


async def test_the_token_never_reaches_logs_or_errors(
    fake: FakeTelegram, prompts_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    alice = fake.user(1016, "Alice")
    chat = fake.private_chat(alice)
    async with running(fake, prompts_dir, Scripted(REPLY)):
        # aiohttp quotes the URL (with the token) in a TooManyRedirects error; aiogram logs it.
        fake.redirect_loop.add("getUpdates")
        await fake.wait_for(lambda: "Failed to fetch updates" in caplog.text)
        fake.redirect_loop.clear()
        fake.push_text(chat, alice, "still works?")
        await wait_messages(fake, chat["id"], 1, within=8)
    assert "<redacted>/getUpdates" in caplog.text
    assert fake.token not in caplog.text
    # A rejected token at start: a configuration error that does not quote it.
    wrong = "987654321:AAWrongTokenThatTelegramDoesNotKnow0000"
    settings = TelegramSettings(
        _env_file=None, TELEGRAM_BOT_TOKEN=wrong, TELEGRAM_API_URL=fake.base_url
    )
    manager = DialogManager(MemoryStore(), Scripted(REPLY), PromptLibrary(prompts_dir))
    with pytest.raises(Exception, match="TELEGRAM_BOT_TOKEN") as caught:
        await Runner(TelegramApp(manager, settings)).run_polling(handle_signals=False)
    assert wrong not in str(caught.value) and wrong not in caplog.text


async def test_a_bad_local_server_setting_is_one_line_and_exit_2(
    fake: FakeTelegram, tmp_path: Path
) -> None:
    env = base_env(fake, tmp_path, TELEGRAM_API_LOCAL="yes please")
    proc = fmbot(env=env, cwd=tmp_path)
    assert await exited(proc, 30) == 2
    assert proc.stderr is not None and proc.stdout is not None
    output = proc.stderr.read().decode() + proc.stdout.read().decode()
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert "TELEGRAM_API_LOCAL='yes please' is not valid" in lines[0]
    assert "--local" in lines[0] and "Traceback" not in output and fake.token not in output


async def test_an_api_url_that_is_no_bot_api_server_is_one_line_without_the_token(
    fake: FakeTelegram, tmp_path: Path
) -> None:
    async with NotBotApi() as website:
        env = base_env(fake, tmp_path, TELEGRAM_API_URL=website.base_url)
        proc = fmbot(env=env, cwd=tmp_path)
        assert await exited(proc, 30) == 2
        assert website.requests  # it was asked, and answered with a web page
    assert proc.stderr is not None and proc.stdout is not None
    output = proc.stderr.read().decode() + proc.stdout.read().decode()
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert "TELEGRAM_API_URL" in lines[0] and website.base_url in lines[0]
    assert "Bot API server (HTTP 404 Not Found" in lines[0] and "check the URL" in lines[0]
    assert fake.token not in output and "Traceback" not in output

"""Pictures in Telegram (issue 17) end to end: aiogram's real Bot and session polling the fake Bot
API (photos, image files, albums, getFile and downloads), a manager assembled by build_manager
with FMBOT_VISION_MODEL=openai:vision-test on the fake OpenAI server, which decodes every picture
it receives (received_images) and says what it saw ("I see 1 picture: 1280x960 JPEG.")."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from adapters.telegram import TelegramApp, TelegramSettings
from adapters.telegram.access import REFUSAL
from adapters.telegram.pictures import GONE, TOO_BIG, UNSUPPORTED_IMAGE
from adapters.telegram.runner import Runner
from bot.app import build_manager
from bot.dialog import VISION_SETUP_HINT, DialogManager
from bot.models.registry import close_models
from bot.settings import Settings
from tests.fakes import FakeOpenAI
from tests.fakes.chat_completions import ReceivedImage
from tests.fakes.telegram_server import BOT_USERNAME, FakeTelegram

MENTION = f"@{BOT_USERNAME}"
RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 200, 30)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("TELEGRAM_", "FMBOT_", "OPENAI_", "YANDEX_")):
            monkeypatch.delenv(name)


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


@pytest.fixture
async def openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


def picture(
    width: int, height: int, colour: tuple[int, int, int] = RED, fmt: str = "JPEG"
) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, fmt)
    return out.getvalue()


def colour_of(image: ReceivedImage) -> tuple[int, ...]:
    with image.open() as opened:
        rgb = opened.convert("RGB")
        pixel = rgb.getpixel((rgb.width // 2, rgb.height // 2))
    assert isinstance(pixel, tuple)
    return pixel


def near(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return all(abs(x - y) <= 12 for x, y in zip(a, b, strict=True))  # JPEG's rounding


def vision_settings(openai: FakeOpenAI, home: Path, *, vision: bool = True) -> Settings:
    values: dict[str, Any] = {
        "FMBOT_TEXT_MODEL": "echo:",
        "FMBOT_STORE": f"sqlite:///{home / 'fmbot.db'}",
        "FMBOT_HOME": str(home),
        "OPENAI_BASE_URL": openai.base_url,
        "OPENAI_API_KEY": openai.api_key,
        # A picture counts 1,500 tokens: the 4,096 default would refuse an album of three.
        "FMBOT_CONTEXT_TOKENS": 16_000,
    }
    if vision:
        values["FMBOT_VISION_MODEL"] = "openai:vision-test"
    return Settings(_env_file=None, **values)


def tg_settings(fake: FakeTelegram, **env: Any) -> TelegramSettings:
    values = {"TELEGRAM_BOT_TOKEN": fake.token, "TELEGRAM_API_URL": fake.base_url, **env}
    return TelegramSettings(_env_file=None, TELEGRAM_EDIT_INTERVAL=0.25, **values)


@dataclass
class Bot:
    manager: DialogManager
    app: TelegramApp


@contextlib.asynccontextmanager
async def running(
    fake: FakeTelegram, openai: FakeOpenAI, home: Path, *, vision: bool = True, **env: Any
) -> AsyncIterator[Bot]:
    """``fmbot telegram`` (--role all) as build_manager assembles it, polling the fake."""
    manager = await build_manager(vision_settings(openai, home, vision=vision))
    app = TelegramApp(manager, tg_settings(fake, **env))
    runner = Runner(app, polling_timeout=1)
    task = asyncio.create_task(runner.run_polling(handle_signals=False))
    try:
        await fake.wait_for(lambda: bool(fake.calls("getUpdates")) or task.done(), 10)
        if task.done():
            task.result()
        yield Bot(manager, app)
    finally:
        runner.request_stop()
        await asyncio.wait_for(task, 15)
        await manager.aclose()
        await close_models()  # the registry caches the model, with this test's server URL


def texts(fake: FakeTelegram, chat_id: int) -> list[str]:
    return [m.get("text") or "" for m in fake.bot_messages(chat_id)]


async def replies(fake: FakeTelegram, chat_id: int, count: int, within: float = 10) -> list[str]:
    await fake.wait_for(lambda: len(fake.bot_messages(chat_id)) >= count, within)
    return texts(fake, chat_id)


async def answered(fake: FakeTelegram, chat_id: int, question: str, within: float = 10) -> str:
    """The bot's answer echoing ``question``, once complete (group replies grow by edits)."""
    await fake.wait_for(lambda: any(t.endswith(question) for t in texts(fake, chat_id)), within)
    return next(t for t in texts(fake, chat_id) if t.endswith(question))


def chat_requests(openai: FakeOpenAI) -> int:
    return len(openai.requests_to("/chat/completions"))


# --- photos and image files ----------------------------------------------------------------


async def test_a_photo_with_a_caption_is_answered_by_the_vision_model_from_its_largest_size(
    fake: FakeTelegram, openai: FakeOpenAI, tmp_path: Path
) -> None:
    alice = fake.user(3001, "Alice")
    chat = fake.private_chat(alice)
    async with running(fake, openai, tmp_path) as bot:
        sent = fake.push_photo(chat, alice, picture(2000, 1500, BLUE), caption="what colour?")
        [answer] = await replies(fake, chat["id"], 1)
        [asked, _] = await bot.manager.store.read(f"tg:{alice['id']}")
    largest = sent["photo"][-1]
    assert (largest["width"], largest["height"]) == (1280, 960)
    assert fake.downloads == [largest["file_id"]]  # only the largest size, once
    [seen] = openai.received_images
    assert (seen.width, seen.height, seen.format) == (1280, 960, "JPEG")
    assert near(colour_of(seen), BLUE)
    assert answer.startswith("I see 1 picture: 1280x960 JPEG.") and "what colour?" in answer
    # History keeps Telegram's file_id, not the bytes.
    assert asked.text == "what colour?"
    assert [p["source"] for p in asked.meta["pictures"]] == [f"telegram:{largest['file_id']}"]


async def test_an_image_file_is_sent_as_is_and_a_large_one_downscaled(
    fake: FakeTelegram, openai: FakeOpenAI, tmp_path: Path
) -> None:
    alice = fake.user(3002, "Alice")
    chat = fake.private_chat(alice)
    async with running(fake, openai, tmp_path):
        fake.push_document(
            chat, alice, picture(600, 400, GREEN, "PNG"), mime_type="image/png", file_name="a.png"
        )
        await replies(fake, chat["id"], 1)
        big = picture(4000, 3000, RED)
        fake.push_document(chat, alice, big, mime_type="image/jpeg", file_name="IMG_1.jpg")
        answers = await replies(fake, chat["id"], 2)
    small, large = openai.received_images[0], openai.received_images[-1]
    assert (small.width, small.height) == (600, 400) and near(colour_of(small), GREEN)
    assert (large.width, large.height, large.format) == (1568, 1176, "JPEG")
    assert near(colour_of(large), RED)
    assert answers[0].startswith("I see 1 picture: 600x400 JPEG.")
    # Without a caption the template's request is the question.
    assert "Describe this picture." in answers[0]
    assert answers[1].startswith("I see 1 picture: 1568x1176 JPEG.")
    assert len(fake.downloads) == 2


async def test_without_a_vision_model_a_photo_gets_the_setup_hint_and_nothing_is_downloaded(
    fake: FakeTelegram, openai: FakeOpenAI, tmp_path: Path
) -> None:
    alice = fake.user(3003, "Alice")
    chat = fake.private_chat(alice)
    async with running(fake, openai, tmp_path, vision=False):
        fake.push_photo(chat, alice, picture(800, 600), caption="what is it?")
        answers = await replies(fake, chat["id"], 1)
        fake.push_text(chat, alice, "hello")
        answers = await replies(fake, chat["id"], 2)
    assert answers == ["⚠️ " + VISION_SETUP_HINT, "echo: hello"]
    assert fake.downloads == [] and fake.calls("getFile") == []
    assert chat_requests(openai) == 0


async def test_corrupt_unsupported_and_too_large_files_get_a_clear_reply_and_no_model_call(
    fake: FakeTelegram, openai: FakeOpenAI, tmp_path: Path
) -> None:
    alice = fake.user(3004, "Alice")
    chat = fake.private_chat(alice)
    corrupt = picture(800, 600)[:300]  # a JPEG cut short: its header reads, its pixels do not
    async with running(fake, openai, tmp_path):
        fake.push_document(chat, alice, corrupt, mime_type="image/jpeg", file_name="cut.jpg")
        garbage = fake.add_file(b"definitely not a picture", kind="photos", extension="jpg")
        fake.push_message(chat, alice, photo=[garbage.photo_size(800, 600)], caption="and this?")
        fake.push_document(chat, alice, b"HEIC", mime_type="image/heic", file_name="a.heic")
        # 25 MB as Telegram describes it: refused before getFile.
        fake.push_document(
            chat, alice, b"x", mime_type="image/jpeg", file_name="huge.jpg", size=25 * 2**20
        )
        fake.push_document(chat, alice, b"%PDF-1.4", mime_type="application/pdf", file_name="a.pdf")
        answers = await replies(fake, chat["id"], 5)  # in any order: each runs on its own
    [damaged] = [a for a in answers if "damaged" in a]
    assert "send it again" in damaged
    assert sum("not a picture I can read" in a for a in answers) == 1
    assert UNSUPPORTED_IMAGE.format(kind="image/heic") in answers
    assert TOO_BIG in answers and "20 MB" in TOO_BIG
    assert sum("can't open files" in a for a in answers) == 1  # not an image: today's reply
    assert chat_requests(openai) == 0 and openai.received_images == []
    assert len(fake.downloads) == 2  # the corrupt two; neither the HEIC nor the huge one


async def test_telegrams_refusals_of_a_file_become_clear_replies(
    fake: FakeTelegram, openai: FakeOpenAI, tmp_path: Path
) -> None:
    alice = fake.user(3005, "Alice")
    chat = fake.private_chat(alice)
    fake.download_limit = 1000  # getFile says "file is too big" above it, as above 20 MB
    async with running(fake, openai, tmp_path):
        fake.push_document(
            chat, alice, picture(900, 900), mime_type="image/jpeg", file_name="b.jpg"
        )
        gone = {"file_id": "AgACAgIAAxkBAAInvalid", "file_unique_id": "x", "width": 9, "height": 9}
        fake.push_message(chat, alice, photo=[gone])
        answers = await replies(fake, chat["id"], 2)
    assert sorted(answers) == sorted(["⚠️ " + TOO_BIG, "⚠️ " + GONE])
    assert fake.downloads == [] and chat_requests(openai) == 0


async def test_stickers_keep_their_reply_and_strangers_pictures_are_refused_unread(
    fake: FakeTelegram, openai: FakeOpenAI, tmp_path: Path
) -> None:
    alice, mallory = fake.user(3006, "Alice"), fake.user(3007, "Mallory")
    chats = fake.private_chat(alice), fake.private_chat(mallory)
    async with running(fake, openai, tmp_path, TELEGRAM_ALLOWED_USERS="3006"):
        fake.push_sticker(chats[0], alice)
        fake.push_photo(chats[1], mallory, picture(800, 600), caption="let me in")
        await replies(fake, alice["id"], 1)
        await replies(fake, mallory["id"], 1)
    assert "sticker" in texts(fake, alice["id"])[0]
    assert texts(fake, mallory["id"]) == [REFUSAL]
    assert fake.downloads == [] and chat_requests(openai) == 0


# --- groups and topics ----------------------------------------------------------------------


async def test_a_group_picture_is_read_only_when_it_is_addressed_to_the_bot(
    fake: FakeTelegram, openai: FakeOpenAI, tmp_path: Path
) -> None:
    bob = fake.user(3011, "Bob")
    group = fake.group(-301100)
    async with running(fake, openai, tmp_path) as bot:
        fake.push_photo(group, bob, picture(800, 600), caption="our holiday")
        fake.push_photo(group, bob, picture(800, 600, BLUE))  # no caption at all
        fake.push_photo(group, bob, picture(800, 600, GREEN), caption=f"{MENTION} what is this?")
        first = await answered(fake, group["id"], "what is this?")
        answer = fake.bot_messages(group["id"])[0]
        fake.push_photo(group, bob, picture(640, 480, BLUE), caption="and now?", reply_to=answer)
        second = await answered(fake, group["id"], "and now?")
        await asyncio.sleep(0.3)  # a late answer to the first two would come now
        history = await bot.manager.store.read(f"tg:{group['id']}")
    assert len(fake.bot_messages(group["id"])) == 2
    assert len(fake.downloads) == 2  # the mentioned photo and the reply; never the others
    assert [(i.width, i.height) for i in openai.received_images] == [(800, 600), (640, 480)]
    assert near(colour_of(openai.received_images[0]), GREEN)
    assert first.startswith("I see 1 picture") and "what is this?" in first
    assert MENTION not in first  # the mention is how the bot was called, not the question
    assert second.startswith("I see 1 picture: 640x480")
    assert [t.text for t in history if t.role == "user"] == ["what is this?", "and now?"]


async def test_a_topic_picture_is_answered_in_its_topic(
    fake: FakeTelegram, openai: FakeOpenAI, tmp_path: Path
) -> None:
    bob = fake.user(3012, "Bob")
    forum = fake.group(-301200, "Forum", forum=True)
    topic = fake.create_topic(forum, "Plants", bob)
    async with running(fake, openai, tmp_path) as bot:
        fake.push_photo(forum, bob, picture(800, 600), caption="what plant?", thread_id=topic)
        caption = f"{MENTION} what plant?"
        fake.push_photo(forum, bob, picture(800, 600, GREEN), caption=caption, thread_id=topic)
        await answered(fake, forum["id"], "what plant?")
        await asyncio.sleep(0.3)
        history = await bot.manager.store.read(f"tg:{forum['id']}:{topic}")
    [sent] = [m for m in fake.bot_messages(forum["id"]) if "text" in m]
    assert sent["message_thread_id"] == topic and sent["text"].startswith("I see 1 picture")
    assert len(fake.downloads) == 1
    assert history[0].text == "what plant?"


# --- follow-ups ------------------------------------------------------------------


async def test_a_follow_up_question_sees_the_picture_again_fetched_by_its_file_id(
    fake: FakeTelegram, openai: FakeOpenAI, tmp_path: Path
) -> None:
    """A restart in between: the new process has no copy, only the file_id in history."""
    alice = fake.user(3023, "Alice")
    chat = fake.private_chat(alice)
    async with running(fake, openai, tmp_path):
        sent = fake.push_photo(chat, alice, picture(1000, 750, GREEN), caption="what is it?")
        await replies(fake, chat["id"], 1)
    async with running(fake, openai, tmp_path):
        fake.push_text(chat, alice, "and what colour is it?")
        answers = await replies(fake, chat["id"], 2)
    file_id = sent["photo"][-1]["file_id"]
    assert fake.downloads == [file_id, file_id]
    assert answers[1].startswith("I see 1 picture: 1000x750 JPEG.")
    assert "and what colour is it?" in answers[1]
    assert near(colour_of(openai.received_images[-1]), GREEN)
    assert not (tmp_path / "media").exists()  # Telegram keeps the file: no local copy

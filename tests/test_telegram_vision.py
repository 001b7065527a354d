"""Pictures in Telegram (issue 17) end to end: aiogram's real Bot and session polling the fake Bot
API (photos, image files, albums, getFile and downloads), a manager assembled by build_manager
with FMBOT_VISION_MODEL=openai:vision-test on the fake OpenAI server, which decodes every picture
it receives (received_images) and says what it saw ("I see 1 picture: 1280x960 JPEG.").

Then ``--role ingress`` + ``--role worker`` over the real Redis queue: the ingress queues updates
only (no model, no download); the worker fetches each picture itself by file_id, and answers an
album, queued as one job per item, once."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiogram.types import Update
from PIL import Image

from adapters.telegram import TelegramApp, TelegramSettings
from adapters.telegram.access import REFUSAL
from adapters.telegram.albums import QueuedAlbums
from adapters.telegram.app import make_bot
from adapters.telegram.ingress import PollingIngress, chat_key, payload
from adapters.telegram.pictures import GONE, NOT_DOWNLOADED, TOO_BIG, UNSUPPORTED_IMAGE
from adapters.telegram.roles import run_ingress
from adapters.telegram.runner import Runner
from adapters.telegram.worker import TelegramWorker
from bot.app import build_manager
from bot.dialog import LOST_PICTURE, VISION_SETUP_HINT, DialogManager
from bot.models.echo import EchoModel
from bot.models.registry import close_models
from bot.models.remote import create_vision_model
from bot.prompts.library import PromptLibrary
from bot.queue import Ingress, Job, QueueKeys
from bot.queue.journal import JournaledRedisStore
from bot.redis.connect import connect
from bot.settings import Settings
from tests.conftest import free_port
from tests.fakes import FakeOpenAI, Recorded
from tests.fakes.chat_completions import ReceivedImage
from tests.fakes.telegram_server import BOT_USERNAME, FakeTelegram
from tests.test_telegram_roles import base_env, exited, fmbot

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


def vision_settings(openai: FakeOpenAI, home: Path, *, vision: bool = True, **env: Any) -> Settings:
    values: dict[str, Any] = {
        **env,
        "FMBOT_TEXT_MODEL": "echo:",
        "FMBOT_STORE": f"sqlite:///{home / 'fmbot.db'}",
        "FMBOT_HOME": str(home),
        "OPENAI_BASE_URL": openai.base_url,
        "OPENAI_API_KEY": openai.api_key,
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
    fake: FakeTelegram,
    openai: FakeOpenAI,
    home: Path,
    *,
    vision: bool = True,
    fmbot_env: dict[str, Any] | None = None,
    **env: Any,
) -> AsyncIterator[Bot]:
    """``fmbot telegram`` (--role all) as build_manager assembles it, polling the fake."""
    manager = await build_manager(vision_settings(openai, home, vision=vision, **(fmbot_env or {})))
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


async def test_image_files_jpeg_png_webp_and_gif_are_read_and_a_large_one_downscaled(
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
        for fmt, mime in (("WEBP", "image/webp"), ("GIF", "image/gif")):
            data = picture(300, 200, BLUE, fmt)
            fake.push_document(chat, alice, data, mime_type=mime, file_name=f"a.{fmt.lower()}")
            await replies(fake, chat["id"], len(answers) + 1)
            answers = texts(fake, chat["id"])
    small, large = openai.received_images[0], openai.received_images[1]
    assert (small.width, small.height) == (600, 400) and near(colour_of(small), GREEN)
    assert (large.width, large.height, large.format) == (1568, 1176, "JPEG")
    assert near(colour_of(large), RED)
    assert answers[0].startswith("I see 1 picture: 600x400 JPEG.")
    # Without a caption the template's request is the question.
    assert "Describe this picture." in answers[0]
    assert answers[1].startswith("I see 1 picture: 1568x1176 JPEG.")
    assert answers[2:] == ["I see 1 picture: 300x200 JPEG. Echo: Describe this picture."] * 2
    assert all(near(colour_of(i), BLUE) for i in openai.received_images[2:])
    assert len(fake.downloads) == 4


async def test_a_photo_is_read_from_its_largest_size_a_bot_may_download(
    fake: FakeTelegram, openai: FakeOpenAI, tmp_path: Path
) -> None:
    alice = fake.user(3009, "Alice")
    chat = fake.private_chat(alice)
    small = fake.add_file(picture(320, 240, GREEN), kind="photos", extension="jpg")
    huge = fake.add_file(b"x", kind="photos", extension="jpg", size=25 * 2**20)
    async with running(fake, openai, tmp_path):
        sizes = [small.photo_size(320, 240), huge.photo_size(6400, 4800)]
        fake.push_message(chat, alice, photo=sizes, caption="what is it?")
        [answer] = await replies(fake, chat["id"], 1)
    assert answer.startswith("I see 1 picture: 320x240 JPEG.")
    assert fake.downloads == [small.file_id]


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
        huge = fake.add_file(b"x", kind="photos", extension="jpg", size=25 * 2**20)
        fake.push_message(chat, alice, photo=[huge.photo_size(9000, 6000)])
        fake.push_document(chat, alice, b"%PDF-1.4", mime_type="application/pdf", file_name="a.pdf")
        answers = await replies(fake, chat["id"], 6)  # in any order: each runs on its own
    [damaged] = [a for a in answers if "damaged" in a]
    assert "send it again" in damaged
    assert sum("not a picture I can read" in a for a in answers) == 1
    assert "⚠️ " + UNSUPPORTED_IMAGE.format(kind="image/heic") in answers
    assert answers.count("⚠️ " + TOO_BIG) == 2 and "20 MB" in TOO_BIG
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


async def test_a_failed_download_asks_to_send_it_again_and_logs_no_token(
    fake: FakeTelegram, openai: FakeOpenAI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    alice = fake.user(3008, "Alice")
    chat = fake.private_chat(alice)
    async with running(fake, openai, tmp_path):
        fake.fail_next("getFile", 500, "Internal Server Error")
        fake.push_photo(chat, alice, picture(800, 600), caption="first")
        await replies(fake, chat["id"], 1)
        # A file the server does not serve at its path (as when a file_path has expired):
        # 404 at the download, whose URL holds the token, as aiohttp's error quotes it.
        stored = fake.add_file(picture(700, 500), extension="jpg?gone")
        document = {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id}
        fake.push_message(chat, alice, document={**document, "mime_type": "image/jpeg"})
        answers = await replies(fake, chat["id"], 2)
    assert answers == ["⚠️ " + NOT_DOWNLOADED] * 2
    assert fake.downloads == [] and chat_requests(openai) == 0
    assert len(fake.calls("getFile")) == 2  # the second failed at the download
    assert fake.token not in caplog.text and "file_" not in caplog.text
    assert "could not be downloaded" in caplog.text


async def test_every_way_a_file_fails_to_arrive_gets_a_clear_reply_and_loses_nothing(
    fake: FakeTelegram, openai: FakeOpenAI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """getFile's "file is too big" (a file whose size Telegram did not state), a download that
    answers 404 or 500, and one cut short: each a reply saying what to do, no model call, no
    traceback, no token logged; the chat goes on and the same photo sent again is answered."""
    caplog.set_level(logging.DEBUG)
    alice = fake.user(3010, "Alice")
    chat = fake.private_chat(alice)
    async with running(fake, openai, tmp_path) as bot:
        fake.push_text(chat, alice, "hello")
        await replies(fake, chat["id"], 1)
        fake.fail_next("getFile", 400, "Bad Request: file is too big")
        fake.push_photo(chat, alice, picture(800, 600), caption="first")
        await replies(fake, chat["id"], 2)
        for status in (404, 500):
            fake.fail_download(status)
            fake.push_photo(chat, alice, picture(800, 600), caption=f"after {status}")
            await replies(fake, chat["id"], len(texts(fake, chat["id"])) + 1)
        fake.fail_download(cut=True)
        fake.push_photo(chat, alice, picture(800, 600), caption="cut")
        await replies(fake, chat["id"], 5)
        assert chat_requests(openai) == 0 and fake.downloads == []
        fake.push_photo(chat, alice, picture(800, 600, BLUE), caption="again")
        answers = await replies(fake, chat["id"], 6)
        history = await bot.manager.store.read(f"tg:{alice['id']}")
    assert answers[1:5] == ["⚠️ " + TOO_BIG] + ["⚠️ " + NOT_DOWNLOADED] * 3
    assert answers[5].startswith("I see 1 picture: 800x600 JPEG.") and "again" in answers[5]
    assert [t.text for t in history if t.role == "user"] == ["hello", "again"]
    assert len(fake.downloads) == 1
    assert [e for e in fake.errors if e[0] == "download"] == [
        ("download", 404, "Not Found"),
        ("download", 500, "Internal Server Error"),
    ]
    assert fake.token not in caplog.text and "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info]
    assert caplog.text.count("could not be downloaded from Telegram") == 3


async def test_a_photo_through_a_local_bot_api_server_is_read_from_its_disk(
    fake: FakeTelegram, openai: FakeOpenAI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A self-hosted server started with --local answers getFile with a path on its disk:
    TELEGRAM_API_LOCAL=true reads it there, TELEGRAM_API_LOCAL_FILES where the bot sees that
    disk under another path (a container's mount). Nothing is downloaded over HTTP."""
    caplog.set_level(logging.DEBUG)
    alice = fake.user(3026, "Alice")
    chat = fake.private_chat(alice)
    fake.local_dir = tmp_path / "bot-api"
    async with running(fake, openai, tmp_path, TELEGRAM_API_LOCAL="true"):
        fake.push_photo(chat, alice, picture(1000, 750, GREEN), caption="what is it?")
        [first] = await replies(fake, chat["id"], 1)
    # getFile put the largest size on the server's disk, as <dir>/<token>/photos/file_N.jpg.
    assert len(list((fake.local_dir / fake.token / "photos").iterdir())) == 1
    # The same server's disk, mounted elsewhere for the bot.
    fake.local_name = Path("/var/lib/telegram-bot-api")
    mapping = f"{fake.local_name}:{fake.local_dir}"
    async with running(
        fake, openai, tmp_path, TELEGRAM_API_LOCAL="true", TELEGRAM_API_LOCAL_FILES=mapping
    ):
        fake.push_photo(chat, alice, picture(800, 600, BLUE), caption="and this?")
        await replies(fake, chat["id"], 2)
        # A path outside the mapped folder cannot be read: a clear reply, no path in the logs.
        fake.local_name = Path("/somewhere/else")
        fake.push_photo(chat, alice, picture(800, 600, BLUE), caption="and that?")
        answers = await replies(fake, chat["id"], 3)
    assert first.startswith("I see 1 picture: 1000x750 JPEG.") and "what is it?" in first
    assert answers[1].startswith("I see 1 picture: 800x600 JPEG.") and "and this?" in answers[1]
    assert answers[2] == "⚠️ " + NOT_DOWNLOADED
    assert near(colour_of(openai.received_images[0]), GREEN)
    assert near(colour_of(openai.received_images[1]), BLUE)
    assert fake.downloads == []  # read from disk, never over HTTP
    assert fake.token not in caplog.text and "Traceback" not in caplog.text


async def test_a_local_bot_api_server_the_bot_was_not_told_of_gets_a_hint_in_the_log(
    fake: FakeTelegram, openai: FakeOpenAI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alice = fake.user(3027, "Alice")
    chat = fake.private_chat(alice)
    fake.local_dir = tmp_path / "bot-api"
    async with running(fake, openai, tmp_path):
        fake.push_photo(chat, alice, picture(800, 600), caption="what is it?")
        answers = await replies(fake, chat["id"], 1)
    assert answers == ["⚠️ " + NOT_DOWNLOADED] and chat_requests(openai) == 0
    assert "set TELEGRAM_API_LOCAL=true" in caplog.text and fake.token not in caplog.text


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


# --- albums and follow-ups ------------------------------------------------------------------


async def test_an_album_is_one_turn_with_all_its_pictures_answered_once(
    fake: FakeTelegram, openai: FakeOpenAI, tmp_path: Path
) -> None:
    alice = fake.user(3021, "Alice")
    chat = fake.private_chat(alice)
    images = [picture(800, 600, RED), picture(600, 800, GREEN), picture(500, 500, BLUE)]
    async with running(fake, openai, tmp_path) as bot:
        fake.push_album(chat, alice, images, caption="which one is best?")
        [answer] = await replies(fake, chat["id"], 1)
        await asyncio.sleep(1.5)  # more answers would come now
        [asked, _] = await bot.manager.store.read(f"tg:{alice['id']}")
    assert len(fake.bot_messages(chat["id"])) == 1 and chat_requests(openai) == 1
    seen = openai.received_images
    assert [(i.width, i.height) for i in seen] == [(800, 600), (600, 800), (500, 500)]
    assert all(near(colour_of(i), c) for i, c in zip(seen, (RED, GREEN, BLUE), strict=True))
    assert len({i.message for i in seen}) == 1  # one user message with three pictures
    assert answer.startswith("I see 3 pictures") and "which one is best?" in answer
    assert asked.text == "which one is best?" and len(asked.meta["pictures"]) == 3


async def test_a_group_album_without_a_mention_is_not_downloaded_and_with_one_is_answered(
    fake: FakeTelegram, openai: FakeOpenAI, tmp_path: Path
) -> None:
    bob = fake.user(3022, "Bob")
    group = fake.group(-302200)
    images = [picture(640, 480, RED), picture(640, 480, BLUE)]
    async with running(fake, openai, tmp_path):
        fake.push_album(group, bob, images, caption="holiday pics")
        fake.push_album(group, bob, images, caption=f"{MENTION} which is sharper?")
        answer = await answered(fake, group["id"], "which is sharper?")
        await asyncio.sleep(1.5)
    assert len(fake.bot_messages(group["id"])) == 1
    assert answer.startswith("I see 2 pictures") and "which is sharper?" in answer
    assert len(fake.downloads) == 2  # the mentioned album's two


async def test_a_message_sent_right_after_an_album_is_answered_after_it(
    fake: FakeTelegram, openai: FakeOpenAI, tmp_path: Path
) -> None:
    alice = fake.user(3024, "Alice")
    chat = fake.private_chat(alice)
    async with running(fake, openai, tmp_path) as bot:
        fake.push_album(chat, alice, [picture(640, 480), picture(640, 480, BLUE)], caption="which?")
        fake.push_text(chat, alice, "thanks!")  # while the album is still being collected
        answers = await replies(fake, chat["id"], 2)
        history = await bot.manager.store.read(f"tg:{alice['id']}")
    assert answers[0].startswith("I see 2 pictures") and answers[0].endswith("Echo: which?")
    assert answers[1].endswith("Echo: thanks!")  # about the album: its pictures are the latest
    assert [t.text for t in history if t.role == "user"] == ["which?", "thanks!"]


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


async def test_a_follow_up_whose_picture_cannot_be_downloaded_again_says_so_once(
    fake: FakeTelegram, openai: FakeOpenAI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After a restart the picture is fetched again by its file_id; when that download fails,
    the answer comes without it (from the text model) and the person is told why. The loss is
    stored with that turn: later follow-ups, after another restart too, neither fetch the
    picture again nor tell of it again."""
    caplog.set_level(logging.DEBUG)
    alice = fake.user(3025, "Alice")
    chat = fake.private_chat(alice)
    async with running(fake, openai, tmp_path):
        fake.push_photo(chat, alice, picture(1000, 750, GREEN), caption="what is it?")
        await replies(fake, chat["id"], 1)
    async with running(fake, openai, tmp_path):
        fake.fail_download(cut=True)
        fake.push_text(chat, alice, "and what colour is it?")
        answers = await replies(fake, chat["id"], 3)
        fake.push_text(chat, alice, "and its size?")
        answers = await replies(fake, chat["id"], 4)
    fetched = (len(fake.calls("getFile")), len(file_requests(fake)))
    assert fetched == (2, 2)  # the first turn's, and the failed one
    async with running(fake, openai, tmp_path):
        fake.push_text(chat, alice, "and now?")
        answers = await replies(fake, chat["id"], 5)
    assert answers[1] == "⚠️ " + LOST_PICTURE
    assert answers[2:] == ["echo: and what colour is it?", "echo: and its size?", "echo: and now?"]
    assert (len(fake.calls("getFile")), len(file_requests(fake))) == fetched
    assert len(openai.received_images) == 1
    assert fake.token not in caplog.text and "Traceback" not in caplog.text


def file_requests(fake: FakeTelegram) -> list[Recorded]:
    """Downloads tried, also those that failed (``downloads`` has those that came whole)."""
    return [r for r in fake.requests if r.path.startswith("/file/")]


async def test_a_picture_trimmed_out_of_the_window_is_not_downloaded_again(
    fake: FakeTelegram, openai: FakeOpenAI, tmp_path: Path
) -> None:
    """After a restart only the file_id is left: a follow-up whose window has no room for the
    picture (1,500 tokens of 1,984) leaves it to the text model without fetching it."""
    small = {"FMBOT_VISION_CONTEXT_TOKENS": 2048, "FMBOT_MAX_TOKENS": 64}
    alice = fake.user(3024, "Alice")
    chat = fake.private_chat(alice)
    long = "tell me more " + "about it " * 160  # ~370 tokens: the picture still fits, just
    async with running(fake, openai, tmp_path, fmbot_env=small):
        sent = fake.push_photo(chat, alice, picture(1000, 750, GREEN), caption="what is it?")
        await replies(fake, chat["id"], 1)
        fake.push_text(chat, alice, long)
        answers = await replies(fake, chat["id"], 2)
    assert answers[1].startswith("I see 1 picture: 1000x750 JPEG.")  # the cached copy
    async with running(fake, openai, tmp_path, fmbot_env=small):
        fake.push_text(chat, alice, "and now?")
        answers = await replies(fake, chat["id"], 3)
    assert answers[2] == "echo: and now?"  # the text model: no picture stayed
    assert fake.downloads == [sent["photo"][-1]["file_id"]]  # once, for the first turn
    assert len(fake.calls("getFile")) == 1


# --- ingress + workers over Redis: the worker fetches the pictures itself -------------------

PARTITIONS = 4
LEASE_MS = 3000


@dataclass
class Worker:
    worker: TelegramWorker
    store: JournaledRedisStore


@contextlib.asynccontextmanager
async def worker(
    fake: FakeTelegram, openai: FakeOpenAI, prompts_dir: Path, url: str, prefix: str
) -> AsyncIterator[Worker]:
    """A queue worker whose manager sees pictures with openai:vision-test."""
    settings = Settings(
        _env_file=None,
        OPENAI_BASE_URL=openai.base_url,
        OPENAI_API_KEY=openai.api_key,
    )
    vision = create_vision_model("openai:vision-test", settings)
    queue = connect(url, socket_timeout=2)
    store = JournaledRedisStore(queue, prefix)
    manager = DialogManager(store, EchoModel(), PromptLibrary(prompts_dir), vision_model=vision)
    app = TelegramApp(manager, tg_settings(fake))
    running = TelegramWorker(app, queue, QueueKeys(prefix, PARTITIONS), lease_ms=LEASE_MS)
    task = asyncio.create_task(running.run())
    try:
        yield Worker(running, store)
        assert not task.done(), task
    finally:
        await running.stop(5)
        await asyncio.wait_for(task, 15)
        await app.bot.session.close()
        await vision.aclose()
        await queue.aclose()


@contextlib.asynccontextmanager
async def ingress(fake: FakeTelegram, url: str, prefix: str) -> AsyncIterator[PollingIngress]:
    queue = connect(url, socket_timeout=2)
    bot = make_bot(tg_settings(fake))
    poller = PollingIngress(bot, Ingress(queue, QueueKeys(prefix, PARTITIONS)), timeout=1)
    task = asyncio.create_task(poller.run())
    try:
        yield poller
    finally:
        poller.request_stop()
        await asyncio.wait_for(task, 15)
        await bot.session.close()
        await queue.aclose()


async def test_the_worker_fetches_pictures_answers_an_album_once_and_follow_ups_see_it(
    fake: FakeTelegram,
    openai: FakeOpenAI,
    prompts_dir: Path,
    redis_server: str,
    redis_prefix: str,
) -> None:
    alice = fake.user(4001, "Alice")
    chat = fake.private_chat(alice)
    async with (
        ingress(fake, redis_server, redis_prefix) as poller,
        worker(fake, openai, prompts_dir, redis_server, redis_prefix) as running,
    ):
        sent = fake.push_photo(chat, alice, picture(1000, 750, RED), caption="what is it?")
        await fake.wait_for(lambda: len(fake.bot_messages(chat["id"])) >= 1, 20)
        images = [picture(800, 600, RED), picture(600, 800, GREEN), picture(500, 500, BLUE)]
        album = fake.push_album(chat, alice, images, caption="and these?")
        await fake.wait_for(lambda: len(fake.bot_messages(chat["id"])) >= 2, 20)
        fake.push_text(chat, alice, "which is the green one?")
        await fake.wait_for(lambda: len(fake.bot_messages(chat["id"])) >= 3, 20)
        await fake.wait_for(lambda: running.worker.worker.handled == 5, 10)
        await asyncio.sleep(1.0)  # a second answer to the album would come now
        history = await running.store.read(f"tg:{alice['id']}")
        assert poller.queued == 5  # one job per update: the ingress does not wait for albums
    answers = texts(fake, chat["id"])
    assert len(answers) == 3 and chat_requests(openai) == 3
    assert answers[0].startswith("I see 1 picture: 1000x750 JPEG.")
    assert answers[1].startswith("I see 3 pictures") and "and these?" in answers[1]
    # The follow-up sees the album again (the latest pictures).
    assert answers[2].startswith("I see 3 pictures") and "which is the green one?" in answers[2]
    seen = openai.received_images
    assert [(i.width, i.height) for i in seen[1:4]] == [(800, 600), (600, 800), (500, 500)]
    assert all(near(colour_of(i), c) for i, c in zip(seen[1:4], (RED, GREEN, BLUE), strict=True))
    largest = [sent["photo"][-1]["file_id"], *(m["photo"][-1]["file_id"] for m in album)]
    assert sorted(fake.downloads) == sorted(largest)  # each once: the worker keeps them
    assert [t.text for t in history if t.role == "user"] == [
        "what is it?",
        "and these?",
        "which is the green one?",
    ]


async def test_an_album_through_the_webhook_ingress_is_answered_once(
    fake: FakeTelegram,
    openai: FakeOpenAI,
    prompts_dir: Path,
    redis_server: str,
    redis_prefix: str,
) -> None:
    """Telegram delivers to a webhook one update at a time and waits for each answer: the
    ingress answers each album photo as soon as it is queued, so the next one comes at once."""
    alice = fake.user(4004, "Alice")
    chat = fake.private_chat(alice)
    port = free_port()
    url = f"http://127.0.0.1:{port}/tg"  # the fake delivers over plain HTTP
    keys = QueueKeys(redis_prefix, PARTITIONS)
    receiving = asyncio.create_task(
        run_ingress(tg_settings(fake), redis_server, keys, webhook=url, host="127.0.0.1", port=port)
    )
    try:
        await fake.wait_for(lambda: fake.webhook is not None, 10)
        async with worker(fake, openai, prompts_dir, redis_server, redis_prefix) as running:
            images = [picture(640, 480), picture(480, 640, GREEN), picture(500, 500, BLUE)]
            fake.push_album(chat, alice, images, caption="all three?")
            await fake.wait_for(lambda: bool(fake.bot_messages(chat["id"])), 20)
            await fake.wait_for(lambda: running.worker.worker.handled == 3, 10)
            await asyncio.sleep(1.0)  # a second answer would come now
    finally:
        os.kill(os.getpid(), signal.SIGTERM)  # the ingress's handler stops it
        await asyncio.wait_for(receiving, 10)
    assert [status for _, status in fake.webhook_deliveries] == [200, 200, 200]
    [answer] = texts(fake, chat["id"])
    assert answer.startswith("I see 3 pictures: 640x480 JPEG, 480x640 JPEG, 500x500 JPEG.")
    assert chat_requests(openai) == 1


async def test_an_album_turn_is_journaled_under_its_first_item_and_its_items_recorded(
    fake: FakeTelegram,
    openai: FakeOpenAI,
    prompts_dir: Path,
    redis_server: str,
    redis_prefix: str,
) -> None:
    """A worker that takes the album's jobs over after a crash (knowing nothing of it) finds the
    first item answered and the others recorded as answered with it."""
    alice = fake.user(4002, "Alice")
    chat = fake.private_chat(alice)
    fake.push_album(chat, alice, [picture(640, 480), picture(640, 480, BLUE)], caption="two?")
    updates = [Update.model_validate(u) for u in fake.pending]
    fake.pending.clear()
    client = connect(redis_server)
    keys = QueueKeys(redis_prefix, PARTITIONS)
    queue = Ingress(client, keys)
    try:
        ids = [
            await queue.enqueue(chat_key(u), payload(u), dedupe=str(u.update_id)) for u in updates
        ]
        async with worker(fake, openai, prompts_dir, redis_server, redis_prefix) as running:
            await fake.wait_for(lambda: bool(fake.bot_messages(chat["id"])), 20)
            await fake.wait_for(lambda: running.worker.worker.handled == 2, 10)
            key = f"tg:{alice['id']}"
            assert (await running.store.replay(key, ids[0])).answered
            # Marked delivered as the job it is journaled as, by the item that answered it.
            assert await client.get(keys.delivered(key)) == ids[0]
        group = updates[0].message.media_group_id if updates[0].message else None
        assert group is not None
        taking_over = QueuedAlbums(client, keys)
        jobs = [
            Job(i, key, payload(u), keys.partition(key), attempt=2)
            for i, u in zip(ids, updates, strict=True)
        ]
        assert [await taking_over.absorbed(job, group) for job in jobs] == [False, True]
    finally:
        await client.aclose()
    assert len(fake.bot_messages(chat["id"])) == 1 and chat_requests(openai) == 1


async def test_a_group_album_with_another_members_message_between_its_items_is_answered_once(
    fake: FakeTelegram,
    openai: FakeOpenAI,
    prompts_dir: Path,
    redis_server: str,
    redis_prefix: str,
) -> None:
    """Group members share the chat's lane: Carol's message queued between Bob's album items
    neither splits the album nor is lost; she is answered after it, as she wrote after it began."""
    bob, carol = fake.user(4005, "Bob"), fake.user(4006, "Carol")
    group = fake.group(-400500)
    images = [picture(800, 600, RED), picture(600, 800, GREEN), picture(500, 500, BLUE)]
    album = "album-4005"
    caption = f"{MENTION} which is best?"
    fake.push_photo(group, bob, images[0], caption=caption, media_group_id=album)
    fake.push_text(group, carol, f"{MENTION} is it lunch time?")
    for image in images[1:]:
        fake.push_photo(group, bob, image, media_group_id=album)
    async with (
        ingress(fake, redis_server, redis_prefix) as poller,
        worker(fake, openai, prompts_dir, redis_server, redis_prefix) as running,
    ):
        await answered(fake, group["id"], "is it lunch time?", within=20)
        await fake.wait_for(lambda: running.worker.worker.handled == 4, 10)
        await asyncio.sleep(1.5)  # a second answer to the album would come now
        history = await running.store.read(f"tg:{group['id']}")
        assert poller.queued == 4
    answers = texts(fake, group["id"])
    assert len(answers) == 2
    assert answers[0].startswith("I see 3 pictures: 800x600 JPEG, 600x800 JPEG, 500x500 JPEG.")
    assert "which is best?" in answers[0]
    assert answers[1].endswith("is it lunch time?")
    # One model request for the album (then Carol's), its three pictures in one user message.
    requests = openai.requests_to("/chat/completions")
    assert len(requests) == 2
    pictures = [
        part
        for message in requests[0].body["messages"]
        if isinstance(message["content"], list)
        for part in message["content"]
        if part.get("type") == "image_url"
    ]
    assert len(pictures) == 3
    seen = openai.received_images[:3]  # the first request's, in order
    assert len({i.message for i in seen}) == 1
    assert [(i.width, i.height) for i in seen] == [(800, 600), (600, 800), (500, 500)]
    assert all(near(colour_of(i), c) for i, c in zip(seen, (RED, GREEN, BLUE), strict=True))
    assert len(fake.downloads) == 3 == len(set(fake.downloads))  # each picture fetched once
    assert [t.text for t in history if t.role == "user"] == ["which is best?", "is it lunch time?"]


async def test_fmbot_ingress_and_worker_processes_answer_a_photo_and_an_album(
    fake: FakeTelegram, openai: FakeOpenAI, tmp_path: Path, redis_server: str, redis_prefix: str
) -> None:
    env = base_env(
        fake,
        tmp_path,
        FMBOT_STORE=redis_server,
        FMBOT_REDIS_PREFIX=redis_prefix,
        FMBOT_QUEUE_PARTITIONS=str(PARTITIONS),
        FMBOT_QUEUE_LEASE_MS=str(LEASE_MS),
        FMBOT_VISION_MODEL="openai:vision-test",
        OPENAI_BASE_URL=openai.base_url,
        OPENAI_API_KEY=openai.api_key or "",
    )
    alice = fake.user(4003, "Alice")
    chat = fake.private_chat(alice)
    procs = [fmbot("--role", role, env=env, cwd=tmp_path) for role in ("ingress", "worker")]
    try:
        fake.push_photo(chat, alice, picture(900, 600, GREEN), caption="what is it?")
        fake.push_album(chat, alice, [picture(640, 480), picture(480, 640, BLUE)], caption="and?")
        try:
            await fake.wait_for(lambda: len(fake.bot_messages(chat["id"])) >= 2, 60)
        except TimeoutError:
            for p in procs:
                p.terminate()
            output = [(p.stderr.read() if p.stderr else b"").decode()[-2000:] for p in procs]
            pytest.fail(f"no replies; output: {output}")
        await asyncio.sleep(1.5)  # a second answer to the album would come now
        answers = texts(fake, chat["id"])
        assert len(answers) == 2 and chat_requests(openai) == 2
        assert answers[0].startswith("I see 1 picture: 900x600 JPEG.")
        assert answers[1].startswith("I see 2 pictures: 640x480 JPEG, 480x640 JPEG.")
        assert len(fake.downloads) == 3
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        assert [await exited(p, 20) for p in procs] == [0, 0]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

"""The fake Bot API's pictures and files (issue 17), checked through aiogram's real client: the
updates parse as aiogram's Message, getFile answers as the cloud Bot API does, and the bytes
downloaded from the file URL are the pictures Telegram would have made."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import aiohttp
import httpx
import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramBadRequest
from aiogram.types import Message, PhotoSize
from PIL import Image

from tests.fakes.telegram_server import BOT_USERNAME, FakeTelegram

TIMEOUT = 5  # seconds, for every call to the fake


@pytest.fixture
async def fake_bot() -> AsyncIterator[tuple[FakeTelegram, Bot]]:
    async with FakeTelegram() as fake:
        session = AiohttpSession(api=TelegramAPIServer.from_base(fake.base_url), timeout=TIMEOUT)
        bot = Bot(fake.token, session=session)
        try:
            yield fake, bot
        finally:
            await bot.session.close()


def picture(width: int, height: int, fmt: str = "JPEG", **save: object) -> bytes:
    """Left half red, right half blue: where the colours end up shows rotation and scaling."""
    image = Image.new("RGB", (width, height), (255, 0, 0))
    image.paste((0, 0, 255), (width // 2, 0, width, height))
    out = io.BytesIO()
    image.save(out, fmt, **save)
    return out.getvalue()


def near(pixel: object, colour: tuple[int, int, int]) -> bool:
    """JPEG blurs colours a little; a wrong colour is far off."""
    assert isinstance(pixel, tuple)
    return all(abs(int(a) - b) < 40 for a, b in zip(pixel, colour, strict=False))


async def updates(bot: Bot) -> list[Message]:
    """The messages pushed since the last call (confirmed, as a poller does)."""
    got = await bot.get_updates(timeout=0, request_timeout=TIMEOUT)
    if got:
        await bot.get_updates(offset=got[-1].update_id + 1, timeout=0, request_timeout=TIMEOUT)
    return [u.message for u in got if u.message is not None]


async def fetch(bot: Bot, size: PhotoSize | str) -> bytes:
    file_id = size if isinstance(size, str) else size.file_id
    data = await bot.download(file_id, timeout=TIMEOUT)
    assert data is not None
    return data.read()


async def test_a_photo_arrives_as_telegram_sizes_smallest_first(
    fake_bot: tuple[FakeTelegram, Bot],
) -> None:
    fake, bot = fake_bot
    alice = fake.user(1, "Alice")
    group = fake.group(-100500)
    fake.push_photo(group, alice, picture(4000, 3000), caption=f"@{BOT_USERNAME} what is it?")
    (message,) = await updates(bot)
    assert message.photo is not None
    sizes = [(p.width, p.height) for p in message.photo]
    assert sizes == [(90, 68), (320, 240), (800, 600), (1280, 960)]
    assert len({p.file_id for p in message.photo}) == len({p.file_unique_id for p in message.photo})
    assert len({p.file_id for p in message.photo}) == 4
    assert message.caption == f"@{BOT_USERNAME} what is it?"
    assert message.caption_entities is not None
    (mention,) = message.caption_entities
    assert (mention.type, mention.offset, mention.length) == ("mention", 0, len(BOT_USERNAME) + 1)
    assert message.media_group_id is None and message.text is None
    assert fake.downloads == []  # nothing fetched until the bot asks

    largest = message.photo[-1]
    data = await fetch(bot, largest)
    image = Image.open(io.BytesIO(data))
    assert (image.format, image.size) == ("JPEG", (1280, 960))
    assert largest.file_size == len(data)
    assert near(image.getpixel((10, 480)), (255, 0, 0))
    assert near(image.getpixel((1270, 480)), (0, 0, 255))
    assert fake.downloads == [largest.file_id]


async def test_a_small_photo_keeps_its_size_and_fewer_variants(
    fake_bot: tuple[FakeTelegram, Bot],
) -> None:
    fake, bot = fake_bot
    alice = fake.user(1, "Alice")
    fake.push_photo(fake.private_chat(alice), alice, picture(500, 250, "PNG"))
    (message,) = await updates(bot)
    assert message.photo is not None
    assert [(p.width, p.height) for p in message.photo] == [(90, 45), (320, 160), (500, 250)]
    # Telegram re-encodes every size as JPEG, whatever was sent.
    assert Image.open(io.BytesIO(await fetch(bot, message.photo[-1]))).format == "JPEG"


async def test_hd_photo_sides_and_exif_rotation(fake_bot: tuple[FakeTelegram, Bot]) -> None:
    fake, bot = fake_bot
    fake.photo_sides = (90, 320, 800, 1280, 2560)
    alice = fake.user(1, "Alice")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned; show rotated 90° clockwise
    fake.push_photo(fake.private_chat(alice), alice, picture(3000, 2000, exif=exif.tobytes()))
    (message,) = await updates(bot)
    assert message.photo is not None
    assert (message.photo[-1].width, message.photo[-1].height) == (1707, 2560)
    image = Image.open(io.BytesIO(await fetch(bot, message.photo[-1])))
    assert image.size == (1707, 2560)
    # Rotated clockwise, the red left half is now on top.
    assert near(image.getpixel((850, 10)), (255, 0, 0))
    assert near(image.getpixel((850, 2550)), (0, 0, 255))


async def test_an_album_shares_one_group_and_the_first_caption(
    fake_bot: tuple[FakeTelegram, Bot],
) -> None:
    fake, bot = fake_bot
    alice = fake.user(1, "Alice")
    forum = fake.group(-100600, forum=True)
    topic = fake.create_topic(forum, "plants", alice)
    sent = fake.push_album(
        forum, alice, [picture(400, 300), picture(300, 400), picture(100, 100)], "which one?",
        thread_id=topic,
    )  # fmt: skip
    assert len(sent) == 3
    messages = await updates(bot)
    assert len(messages) == 3
    groups = {m.media_group_id for m in messages}
    assert len(groups) == 1 and None not in groups
    assert [m.caption for m in messages] == ["which one?", None, None]
    assert all(m.message_thread_id == topic for m in messages)
    largest = [(m.photo[-1].width, m.photo[-1].height) for m in messages if m.photo]
    assert largest == [(400, 300), (300, 400), (100, 100)]


async def test_a_picture_sent_as_file_keeps_its_bytes(fake_bot: tuple[FakeTelegram, Bot]) -> None:
    fake, bot = fake_bot
    alice = fake.user(1, "Alice")
    original = picture(640, 480, "PNG")
    fake.push_document(
        fake.private_chat(alice), alice, original, mime_type="image/png", file_name="plan.png",
        caption="and this?",
    )  # fmt: skip
    (message,) = await updates(bot)
    document = message.document
    assert document is not None
    assert (document.file_name, document.mime_type) == ("plan.png", "image/png")
    assert document.file_size == len(original)
    assert document.thumbnail is not None
    assert (document.thumbnail.width, document.thumbnail.height) == (320, 240)
    assert message.caption == "and this?" and message.caption_entities is None
    assert await fetch(bot, document.file_id) == original  # no recompression
    file = await bot.get_file(document.file_id, request_timeout=TIMEOUT)
    assert file.file_path is not None and file.file_path.endswith(".png")
    assert file.file_unique_id == document.file_unique_id


async def test_a_corrupt_picture_is_served_as_sent(fake_bot: tuple[FakeTelegram, Bot]) -> None:
    fake, bot = fake_bot
    alice = fake.user(1, "Alice")
    broken = picture(640, 480)[:300]  # a JPEG cut short
    fake.push_document(
        fake.private_chat(alice), alice, broken, mime_type="image/jpeg", file_name="cut.jpg"
    )
    (message,) = await updates(bot)
    assert message.document is not None and message.document.thumbnail is None
    assert await fetch(bot, message.document.file_id) == broken
    # A photo whose download is corrupt: register the bytes and list them as a size.
    stored = fake.add_file(b"not a picture", kind="photos", extension="jpg")
    fake.push_message(fake.private_chat(alice), alice, photo=[stored.photo_size(800, 600)])
    (message,) = await updates(bot)
    assert message.photo is not None
    assert await fetch(bot, message.photo[0]) == b"not a picture"
    with pytest.raises(ValueError, match="would not deliver"):
        fake.push_photo(fake.private_chat(alice), alice, b"not a picture")


async def test_get_file_errors_are_the_cloud_bot_apis(fake_bot: tuple[FakeTelegram, Bot]) -> None:
    fake, bot = fake_bot
    with pytest.raises(TelegramBadRequest, match="Bad Request: invalid file_id"):
        await bot.get_file("AgACAgIAAxkBAAIunknown", request_timeout=TIMEOUT)
    huge = fake.add_file(b"\xff\xd8", extension="jpg", size=fake.download_limit + 1)
    with pytest.raises(TelegramBadRequest, match="Bad Request: file is too big"):
        await bot.get_file(huge.file_id, request_timeout=TIMEOUT)
    at_limit = fake.add_file(b"x", size=fake.download_limit)
    assert (await bot.get_file(at_limit.file_id, request_timeout=TIMEOUT)).file_size == (
        20 * 1024 * 1024
    )
    fake.download_limit = 1000  # the limit is the fake's attribute
    alice = fake.user(1, "Alice")
    fake.push_document(
        fake.private_chat(alice), alice, bytes(1001), mime_type="image/png", file_name="a.png"
    )
    (message,) = await updates(bot)
    assert message.document is not None
    with pytest.raises(TelegramBadRequest, match="file is too big"):
        await bot.get_file(message.document.file_id, request_timeout=TIMEOUT)
    assert fake.downloads == []
    assert [e[2] for e in fake.errors] == [
        "Bad Request: invalid file_id",
        "Bad Request: file is too big",
        "Bad Request: file is too big",
    ]


async def test_downloads_need_the_token_and_a_path_from_get_file(
    fake_bot: tuple[FakeTelegram, Bot],
) -> None:
    fake, bot = fake_bot
    stored = fake.add_file(b"bytes", kind="documents", extension="txt")
    async with httpx.AsyncClient(base_url=fake.base_url, timeout=TIMEOUT) as client:
        # Not handed out by getFile yet: the path does not exist on the server.
        assert (await client.get(f"/file/bot{fake.token}/{stored.file_path}")).status_code == 404
        file = await bot.get_file(stored.file_id, request_timeout=TIMEOUT)
        assert file.file_path == stored.file_path
        wrong = await client.get(f"/file/bot123:wrong/{stored.file_path}")
        assert wrong.status_code == 404
        assert wrong.json() == {"ok": False, "error_code": 404, "description": "Not Found"}
        assert (await client.get(f"/file/bot{fake.token}/documents/nope.txt")).status_code == 404
        assert fake.downloads == []
        right = await client.get(f"/file/bot{fake.token}/{stored.file_path}")
        assert (right.status_code, right.content) == (200, b"bytes")
    assert fake.downloads == [stored.file_id]


async def test_a_test_can_make_downloads_fail(fake_bot: tuple[FakeTelegram, Bot]) -> None:
    fake, bot = fake_bot
    data = picture(800, 600)
    stored = fake.add_file(data, kind="photos", extension="jpg")
    fake.fail_download(404)
    fake.fail_download(500)
    fake.fail_download(cut=True)
    with pytest.raises(aiohttp.ClientResponseError) as missing:
        await bot.download(stored.file_id, timeout=TIMEOUT)
    assert missing.value.status == 404
    with pytest.raises(aiohttp.ClientResponseError) as failed:
        await bot.download(stored.file_id, timeout=TIMEOUT)
    assert failed.value.status == 500
    # Half the promised Content-Length, then the connection closes.
    with pytest.raises(aiohttp.ClientPayloadError):
        await bot.download(stored.file_id, timeout=TIMEOUT)
    assert fake.downloads == []  # none of them was downloaded
    assert await fetch(bot, stored.file_id) == data  # then downloads work again
    assert fake.downloads == [stored.file_id]
    assert fake.errors == [
        ("download", 404, "Not Found"),
        ("download", 500, "Internal Server Error"),
    ]
    # getFile's own refusal (as for files over 20 MB), injected for any file.
    fake.fail_next("getFile", 400, "Bad Request: file is too big")
    with pytest.raises(TelegramBadRequest, match="file is too big"):
        await bot.get_file(stored.file_id, request_timeout=TIMEOUT)


async def test_a_sticker_is_a_webp_file(fake_bot: tuple[FakeTelegram, Bot]) -> None:
    fake, bot = fake_bot
    alice = fake.user(1, "Alice")
    fake.push_sticker(fake.private_chat(alice), alice, emoji="🌱")
    (message,) = await updates(bot)
    sticker = message.sticker
    assert sticker is not None
    assert (sticker.type, sticker.emoji, sticker.width, sticker.height) == (
        "regular",
        "🌱",
        512,
        512,
    )
    assert not sticker.is_animated and not sticker.is_video
    image = Image.open(io.BytesIO(await fetch(bot, sticker.file_id)))
    assert (image.format, image.size) == ("WEBP", (512, 512))

"""Pictures users send: normalisation (Pillow) and finding them again (bot.pictures)."""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image

from bot.errors import PictureError
from bot.pictures import MAX_PICTURE_BYTES, MediaDir, Pictures, normalise, picture_refs


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_a_large_photo_is_sent_downscaled_as_jpeg() -> None:
    raw = encode(Image.new("RGB", (4000, 3000), (200, 30, 40)), "JPEG", quality=95)
    picture = normalise(raw, "file:/tmp/big.jpg")
    image = decoded(picture.data)
    assert (image.format, image.size) == ("JPEG", (1568, 1176))
    assert (picture.width, picture.height, picture.mime_type) == (1568, 1176, "image/jpeg")
    assert picture.sha256 == hashlib.sha256(raw).hexdigest()  # of the file as sent
    assert image.getpixel((784, 588)) == pytest.approx((200, 30, 40), abs=3)


def test_the_longest_side_follows_the_setting_and_small_pictures_keep_their_size() -> None:
    raw = encode(Image.new("RGB", (700, 1400), "white"), "PNG")
    assert decoded(normalise(raw, "x:1", max_side=600).data).size == (300, 600)
    assert decoded(normalise(raw, "x:1").data).size == (700, 1400)


def test_exif_orientation_is_applied() -> None:
    # A phone held upright stores a landscape sensor image and "rotate 90° clockwise" (6).
    image = Image.new("RGB", (400, 200), "blue")
    image.paste((255, 0, 0), (0, 0, 200, 200))  # the left half red
    exif = Image.Exif()
    exif[0x0112] = 6
    picture = normalise(encode(image, "JPEG", exif=exif), "x:1")
    upright = decoded(picture.data)
    assert upright.size == (200, 400)
    # Rotated clockwise, the stored left half is on top.
    assert upright.getpixel((100, 50)) == pytest.approx((255, 0, 0), abs=20)
    assert upright.getpixel((100, 350)) == pytest.approx((0, 0, 255), abs=20)


def test_transparency_is_kept_as_png_and_an_opaque_png_becomes_jpeg() -> None:
    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    clear.paste((0, 255, 0, 255), (0, 0, 32, 64))
    picture = normalise(encode(clear, "PNG"), "x:1")
    assert picture.mime_type == "image/png"
    assert decoded(picture.data).getpixel((48, 10))[3] == 0
    opaque = Image.new("RGBA", (64, 64), (0, 255, 0, 255))
    assert normalise(encode(opaque, "PNG"), "x:1").mime_type == "image/jpeg"


def test_webp_and_the_first_frame_of_a_gif_are_read() -> None:
    webp = encode(Image.new("RGB", (50, 40), "yellow"), "WEBP")
    assert decoded(normalise(webp, "x:1").data).size == (50, 40)
    frames = [Image.new("RGB", (30, 30), colour) for colour in ("red", "blue", "green")]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    first = decoded(normalise(gif, "x:1").data)
    assert first.getpixel((15, 15)) == pytest.approx((255, 0, 0), abs=10)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"%PDF-1.7 not a picture at all", "not a picture I can read"),
        (encode(Image.new("RGB", (20, 20)), "BMP"), "BMP image, which I cannot read"),
        (encode(Image.new("RGB", (400, 400), "red"), "JPEG")[:300], "damaged"),
        (encode(Image.new("1", (8000, 7000)), "PNG"), "8000×7000 pixels"),
    ],
    ids=["not-an-image", "unsupported-format", "truncated", "too-many-pixels"],
)
def test_an_unusable_file_is_refused_with_a_reason(raw: bytes, says: str) -> None:
    with pytest.raises(PictureError, match=says):
        normalise(raw, "x:1")


def test_a_file_beyond_the_size_limit_is_refused_unread() -> None:
    with pytest.raises(PictureError, match="the limit is 20 MB"):
        normalise(b"\xff\xd8\xff" + bytes(MAX_PICTURE_BYTES), "x:1")


async def test_a_local_file_is_copied_and_found_again_after_it_is_gone(tmp_path: Path) -> None:
    photo = tmp_path / "plant.png"
    photo.write_bytes(encode(Image.new("RGB", (3000, 1000), "green"), "PNG"))
    media = MediaDir(tmp_path / "media")
    pictures = Pictures(media, cache_bytes=0)  # no memory cache: the copy must serve
    picture = await pictures.get("chat-1", f"file:{photo}")
    assert (picture.width, picture.height) == (1568, 523)
    assert media.count("chat-1") == 1
    photo.unlink()
    [ref] = picture_refs((picture,))
    again = await pictures.again("chat-1", ref)
    assert again is not None and again.data == picture.data
    await pictures.forget("chat-1")
    assert media.count("chat-1") == 0
    assert await pictures.again("chat-1", ref) is None  # copy and file gone: no picture


async def test_the_same_picture_saved_at_once_is_stored_whole(tmp_path: Path) -> None:
    # An upload and the turn that reads it save the same copy at once (threads of to_thread).
    picture = normalise(encode(Image.new("RGB", (800, 600), "green"), "PNG"), "file:/x.png")
    media = MediaDir(tmp_path / "media")
    for round in range(100):  # a shared temporary name failed in a few rounds of these
        chat = f"chat-{round}"
        saved = await asyncio.gather(
            *(media.save(chat, picture) for _ in range(4)), return_exceptions=True
        )
        assert [s for s in saved if s is not None] == []
        [stored] = media.folder(chat).iterdir()  # no temporary file left
        assert stored.read_bytes() == picture.data


async def test_a_changed_file_is_not_taken_for_the_picture_that_was_sent(tmp_path: Path) -> None:
    photo = tmp_path / "a.png"
    photo.write_bytes(encode(Image.new("RGB", (10, 10), "red"), "PNG"))
    pictures = Pictures(None, cache_bytes=0)  # no copies: only the file can serve
    [ref] = picture_refs((await pictures.get("c", f"file:{photo}"),))
    photo.write_bytes(encode(Image.new("RGB", (10, 10), "blue"), "PNG"))
    assert await pictures.again("c", ref) is None


@pytest.mark.parametrize(
    ("name", "says"),
    [("missing.jpg", "There is no file"), ("folder", "is a folder, not a picture")],
)
async def test_a_file_that_cannot_be_read_says_why(tmp_path: Path, name: str, says: str) -> None:
    (tmp_path / "folder").mkdir()
    with pytest.raises(PictureError, match=says):
        await Pictures().get("c", f"file:{tmp_path / name}")


async def test_a_channel_registers_its_own_source() -> None:
    calls: list[str] = []
    png = encode(Image.new("RGB", (10, 10), "red"), "PNG")

    async def fetch(file_id: str) -> bytes:
        calls.append(file_id)
        return png

    pictures = Pictures()
    pictures.register("telegram", fetch)
    picture = await pictures.get("c", "telegram:AgAD-1")
    assert calls == ["AgAD-1"] and picture.source == "telegram:AgAD-1"
    [ref] = picture_refs((picture,))
    assert await pictures.again("c", ref) == picture  # from memory: no second download
    assert calls == ["AgAD-1"]
    with pytest.raises(PictureError, match="cannot be read here"):
        await pictures.get("c", "web:xyz")

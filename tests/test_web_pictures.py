"""Pictures sent from ``fmbot web``'s API: uploaded, named in a message, sent to the vision
model, shown back, forgotten. Real HTTP against the running command; the fake OpenAI and Yandex
servers decode the pictures they receive (tests/fakes/chat_completions.py)."""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.fakes import FakeOpenAI, FakeYandex
from tests.test_web_api import TIMEOUT, events, send
from tests.web_server import openai_env, serving, web_env

HOME_MEDIA = Path("home") / "media"


def encoded(size: tuple[int, int], colour: tuple[int, ...], kind: str = "JPEG") -> bytes:
    out = io.BytesIO()
    mode = "RGBA" if len(colour) == 4 else "RGB"
    Image.new(mode, size, colour).save(out, kind)
    return out.getvalue()


async def upload(client: httpx.AsyncClient, chat: str, data: bytes, kind: str) -> httpx.Response:
    return await client.post(
        f"/api/chats/{chat}/pictures", content=data, headers={"Content-Type": kind}
    )


async def test_an_uploaded_picture_goes_to_the_vision_model_and_is_shown(tmp_path: Path) -> None:
    async with FakeOpenAI() as openai:
        env = openai_env(tmp_path, openai, FMBOT_VISION_MODEL="openai:vision-test")
        with serving(env, tmp_path) as web:
            async with httpx.AsyncClient(base_url=web.url, timeout=TIMEOUT) as client:
                photo = encoded((4000, 3000), (30, 160, 40))
                # The type is what the bytes decode as: a wrong Content-Type changes nothing.
                r = await upload(client, "plants", photo, "image/png")
                assert r.status_code == 201, r.text
                sent = r.json()
                assert sent["picture"] == hashlib.sha256(photo).hexdigest()
                assert (sent["width"], sent["height"]) == (1568, 1176)  # as a model gets it
                shown = await client.get(sent["src"])
                assert shown.status_code == 200
                assert shown.headers["content-type"] == "image/jpeg"
                assert Image.open(io.BytesIO(shown.content)).size == (1568, 1176)

                body = {"text": "what is wrong with it?", "pictures": [sent["picture"]]}
                got = await post(client, "plants", body)
                assert got[-1] == (
                    "final",
                    {
                        "text": "I see 1 picture: 1568x1176 JPEG. Echo: what is wrong with it?",
                        "status": "complete",
                        "sources": [],
                    },
                )
                follow_up = await send(client, "plants", "and how do I fix it?")
                assert str(follow_up[-1][1]["text"]).startswith("I see 1 picture")  # still seen
                [first, again] = openai.received_images
                assert first.model == "vision-test" and first.data == again.data
                assert first.open().getpixel((784, 588)) == pytest.approx((30, 160, 40), abs=4)

                # Without a question, the template's request for a picture; PNG stays PNG
                # where it is see-through.
                clear = encoded((64, 48), (255, 0, 0, 128), "PNG")
                r = await upload(client, "plants", clear, "application/octet-stream")
                got = await post(client, "plants", {"pictures": [r.json()["picture"]]})
                assert (
                    got[-1][1]["text"] == "I see 1 picture: 64x48 PNG. Echo: Describe this picture."
                )

                turns = (await client.get("/api/chats/plants")).json()["turns"]
                pictures = [t["pictures"] for t in turns]
                assert pictures == [
                    [{"src": sent["src"], "width": 1568, "height": 1176}],
                    [],
                    [],
                    [],
                    [{"src": r.json()["src"], "width": 64, "height": 48}],
                    [],
                ]
                assert (await client.get(r.json()["src"])).headers["content-type"] == "image/png"

                gone = await client.delete("/api/chats/plants")  # /forget: the pictures too
                assert gone.status_code == 200
                assert (await client.get(sent["src"])).status_code == 404
        media = tmp_path / HOME_MEDIA
        assert not media.exists() or list(media.iterdir()) == []


async def post(
    client: httpx.AsyncClient, chat: str, body: dict[str, object]
) -> list[tuple[str, dict[str, object]]]:
    async with client.stream("POST", f"/api/chats/{chat}/messages", json=body) as r:
        assert r.status_code == 200, await r.aread()
        return [event async for event in events(r)]


async def test_what_is_not_a_picture_or_too_large_is_refused_clearly(tmp_path: Path) -> None:
    with serving(web_env(tmp_path), tmp_path) as web:
        async with httpx.AsyncClient(base_url=web.url, timeout=TIMEOUT) as client:
            r = await upload(client, "x", b"<svg onload=alert(1)>", "image/jpeg")
            assert r.status_code == 422
            assert r.json()["error"] == (
                "This file is not a picture I can read: please send a JPEG, PNG, WebP or GIF image."
            )
            r = await upload(client, "x", b"", "image/jpeg")
            assert r.status_code == 400 and "bytes as the body" in r.json()["error"]
            r = await upload(client, "x", b"\xff" * (20 * 2**20 + 1), "image/jpeg")
            assert r.status_code == 413 and "over 20 MB" in r.json()["error"]

            unknown = {"text": "see", "pictures": ["0" * 64]}
            r = await client.post("/api/chats/x/messages", json=unknown)
            assert r.status_code == 400 and "upload it first" in r.json()["error"]
            r = await client.post("/api/chats/x/messages", json={"pictures": "abc"})
            assert r.status_code == 400 and "must be a list" in r.json()["error"]
            ok = await upload(client, "x", encoded((10, 10), (0, 0, 0)), "image/jpeg")
            elsewhere = {"text": "see", "pictures": [ok.json()["picture"]]}
            r = await client.post("/api/chats/y/messages", json=elsewhere)
            assert r.status_code == 400  # another chat's picture
            r = await client.get("/api/chats/x/pictures/..%2F..%2Fetc")
            assert r.status_code == 404
            # No vision model (echo only): the turn says how to set one.
            got = await post(client, "x", elsewhere)
            assert "Set FMBOT_VISION_MODEL" in str(got[0][1]["text"])


async def test_the_same_picture_uploaded_at_once_is_kept_whole(tmp_path: Path) -> None:
    # Both an upload's raw bytes and its normalised copy are saved by each request at once.
    photo = encoded((900, 700), (200, 120, 40))
    with serving(web_env(tmp_path), tmp_path) as web:
        async with httpx.AsyncClient(base_url=web.url, timeout=TIMEOUT) as client:
            for round in range(10):
                chat = f"twice-{round}"
                sent = await asyncio.gather(
                    *(upload(client, chat, photo, "image/jpeg") for _ in range(6))
                )
                assert [r.status_code for r in sent] == [201] * 6, sent[0].text
                shown = await client.get(sent[0].json()["src"])
                assert shown.status_code == 200
                with Image.open(io.BytesIO(shown.content)) as image:
                    image.load()  # a truncated copy fails here
                    assert image.size == (900, 700)
    assert "Traceback" not in web.output()


async def test_a_yandex_vision_model_gets_the_picture(tmp_path: Path) -> None:
    async with FakeYandex() as yandex:
        env = web_env(
            tmp_path,
            FMBOT_TEXT_MODEL="yandex:yandexgpt-lite/latest",
            FMBOT_VISION_MODEL="yandex:gemma-3-27b-it/latest",
            YANDEX_API_KEY=yandex.api_key,
            YANDEX_FOLDER_ID=yandex.folder_id,
            YANDEX_FM_URL=yandex.llm_url,
            YANDEX_OPERATIONS_URL=yandex.operations_url,
        )
        with serving(env, tmp_path) as web:
            async with httpx.AsyncClient(base_url=web.url, timeout=TIMEOUT) as client:
                receipt = encoded((600, 900), (250, 250, 250), "WEBP")
                r = await upload(client, "r", receipt, "image/webp")
                got = await post(client, "r", {"text": "total?", "pictures": [r.json()["picture"]]})
        assert got[-1][1]["text"] == "I see 1 picture: 600x900 JPEG. Echo: total?"
        [image] = yandex.received_images
        assert image.model == "gemma-3-27b-it/latest" or image.model.endswith(
            "gemma-3-27b-it/latest"
        )
        assert yandex.api_key not in web.output()

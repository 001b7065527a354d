"""Pictures end to end: ``fmbot console``'s ``/see`` as a user runs it, against the fake
OpenAI-compatible servers (OpenAI, and Yandex AI Studio's /v1 surface), which decode the pictures
they receive."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from tests.fakes import FakeOpenAI, FakeYandex
from tests.test_remote_end_to_end import base_env, fmbot


@pytest.fixture
async def openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def yandex() -> AsyncIterator[FakeYandex]:
    async with FakeYandex() as server:
        yield server


def photo(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> Path:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "JPEG", quality=95)
    path.write_bytes(out.getvalue())
    return path


def openai_env(fake: FakeOpenAI, tmp_path: Path) -> dict[str, str]:
    return base_env(tmp_path) | {
        "FMBOT_TEXT_MODEL": "openai:gpt-test",
        "FMBOT_VISION_MODEL": "openai:vision-test",
        "OPENAI_API_KEY": fake.api_key or "",
        "OPENAI_BASE_URL": fake.base_url,
    }


async def test_see_sends_the_picture_downscaled_and_follow_ups_keep_it(
    openai: FakeOpenAI, tmp_path: Path
) -> None:
    plant = photo(tmp_path / "plant.jpg", (4000, 3000), (30, 160, 40))
    env = openai_env(openai, tmp_path)
    script = f"/see {plant} what is wrong with it?\nand how do I fix it?\n"
    code, out, err = await fmbot(env, "console", stdin=script)
    assert code == 0, err
    assert out.splitlines() == [
        "I see 1 picture: 1568x1176 JPEG. Echo: what is wrong with it?",
        "I see 1 picture: 1568x1176 JPEG. Echo: and how do I fix it?",
    ]
    first, again = openai.received_images
    assert first.model == "vision-test" and first.data == again.data
    assert first.open().getpixel((784, 588)) == pytest.approx((30, 160, 40), abs=4)

    code, out, _ = await fmbot(env, "history", "console")
    assert code == 0
    assert out.splitlines()[0] == "user: [picture] what is wrong with it?"

    code, out, err = await fmbot(env, "console", stdin="/new\nhello\n")
    assert code == 0, err
    assert out.splitlines()[-1] == "Echo: hello"  # after /new: no picture, the text model
    models = [r.body["model"] for r in openai.requests_to("/chat/completions")]
    assert models == ["vision-test", "vision-test", "gpt-test"]


async def test_see_explains_a_missing_or_unreadable_file(
    openai: FakeOpenAI, tmp_path: Path
) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    script = f"/see {tmp_path / 'gone.jpg'} hi\n/see {text}\n/see\n"
    code, out, err = await fmbot(openai_env(openai, tmp_path), "console", stdin=script)
    assert code == 0, err
    assert out.splitlines() == [
        f"There is no file {tmp_path / 'gone.jpg'}.",
        "This file is not a picture I can read: please send a JPEG, PNG, WebP or GIF image.",
        "Give a picture file: /see PATH [QUESTION], e.g. /see ~/photos/plant.jpg what is wrong?",
    ]
    assert openai.requests_to("/chat/completions") == []


async def test_without_a_vision_model_see_says_how_to_set_one(
    openai: FakeOpenAI, tmp_path: Path
) -> None:
    env = openai_env(openai, tmp_path)
    del env["FMBOT_VISION_MODEL"]
    plant = photo(tmp_path / "p.jpg", (50, 50), (0, 0, 0))
    code, out, err = await fmbot(env, "console", stdin=f"/see {plant} what?\nhello\n")
    assert code == 0, err
    hint, reply = out.splitlines()
    assert "Set FMBOT_VISION_MODEL" in hint and reply == "Echo: hello"


async def test_a_yandex_vision_model_through_ai_studios_openai_surface(
    yandex: FakeYandex, tmp_path: Path
) -> None:
    env = base_env(tmp_path) | {
        "FMBOT_TEXT_MODEL": "yandex:yandexgpt-lite/latest",
        "FMBOT_VISION_MODEL": "yandex:gemma-3-27b-it/latest",
        "YANDEX_API_KEY": yandex.api_key,
        "YANDEX_FOLDER_ID": yandex.folder_id,
        "YANDEX_FM_URL": yandex.llm_url,
        "YANDEX_OPERATIONS_URL": yandex.operations_url,
    }
    receipt = photo(tmp_path / "receipt.jpg", (600, 900), (250, 250, 250))
    code, out, err = await fmbot(env, "console", stdin=f"/see {receipt} total?\n")
    assert code == 0, err
    assert out == "I see 1 picture: 600x900 JPEG. Echo: total?\n"
    [call] = yandex.requests_to("/v1/chat/completions")
    assert call.body["model"] == f"gpt://{yandex.folder_id}/gemma-3-27b-it/latest"
    assert call.headers["openai-project"] == yandex.folder_id
    assert yandex.api_key not in out + err


async def test_a_rejected_key_for_the_vision_model_names_the_setting(
    yandex: FakeYandex, tmp_path: Path
) -> None:
    wrong = "AQVN-wrong-vision-key-must-not-leak"
    env = base_env(tmp_path) | {
        "FMBOT_TEXT_MODEL": "openai:gpt-test",  # never called: the turn carries a picture
        "FMBOT_VISION_MODEL": "yandex:gemma-3-27b-it/latest",
        "YANDEX_API_KEY": wrong,
        "YANDEX_FOLDER_ID": yandex.folder_id,
        "YANDEX_FM_URL": yandex.llm_url,
    }
    picture = photo(tmp_path / "p.jpg", (40, 40), (1, 2, 3))
    code, out, err = await fmbot(env, "console", stdin=f"/see {picture}\n")
    assert code == 0
    assert "check YANDEX_API_KEY" in out + err
    assert wrong not in out + err and "Traceback" not in err

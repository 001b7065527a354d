"""The fakes' OpenAI-compatible chat with pictures (issue 17): FakeOpenAI and FakeYandex's AI
Studio surface, driven over real HTTP with httpx. Pictures made with Pillow are decoded back from
what each fake recorded, so a test can trust that "the picture that arrived is the one sent"."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.fakes import FakeOpenAI, FakeYandex, Fault
from tests.fakes.chat_completions import NOT_VISION, UNSUPPORTED_IMAGE, openai_image_tokens

TIMEOUT = 5.0


@pytest.fixture
async def openai() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    async with server:
        yield server


@pytest.fixture
async def yandex() -> AsyncIterator[FakeYandex]:
    server = FakeYandex()
    async with server:
        yield server


def picture(width: int, height: int, fmt: str = "JPEG") -> bytes:
    """A gradient, so every pixel says where it is: a swapped or shifted picture differs."""
    image = Image.new("RGB", (width, height))
    image.putdata(
        [(x * 255 // width, y * 255 // height, 128) for y in range(height) for x in range(width)]
    )
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def data_url(data: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def ask(text: str, *urls: str, detail: str | None = None) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    for url in urls:
        image_url = {"url": url} if detail is None else {"url": url, "detail": detail}
        parts.append({"type": "image_url", "image_url": image_url})
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": parts}]


async def post(url: str, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        return await client.post(url, json=body, headers=headers)


async def stream(url: str, body: dict[str, Any], headers: dict[str, str]) -> list[dict[str, Any]]:
    """The parsed ``data:`` events of an SSE answer, up to ``[DONE]``."""
    events: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient(timeout=TIMEOUT) as client,
        client.stream("POST", url, json=body, headers=headers) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[len("data: ") :]))
            elif line == "data: [DONE]":
                return events
    raise AssertionError("the stream ended without [DONE]")


def openai_auth(fake: FakeOpenAI) -> dict[str, str]:
    return {"Authorization": f"Bearer {fake.api_key}"}


# --- FakeOpenAI ----------------------------------------------------------------------------


async def test_the_picture_that_arrived_is_the_one_sent(openai: FakeOpenAI) -> None:
    sent = picture(1568, 1176)
    png = picture(300, 200, "PNG")
    body = {
        "model": "vision-test",
        "messages": ask("what colour?", data_url(sent), data_url(png, "image/png")),
    }
    response = await post(f"{openai.base_url}/chat/completions", body, openai_auth(openai))
    assert response.status_code == 200, response.text
    reply = response.json()["choices"][0]["message"]["content"]
    assert reply == "I see 2 pictures: 1568x1176 JPEG, 300x200 PNG. Echo: what colour?"
    first, second = openai.received_images
    assert (first.format, first.width, first.height, first.mode) == ("JPEG", 1568, 1176, "RGB")
    assert first.data == sent and (first.message, first.part, first.mime) == (1, 1, "image/jpeg")
    assert second.open().tobytes() == Image.open(io.BytesIO(png)).tobytes()  # lossless: exact
    usage = response.json()["usage"]
    words = (4 + 2) + (4 + 2)  # system "Be brief." and user "what colour?"
    cost = openai_image_tokens(first) + openai_image_tokens(second)
    assert cost == (85 + 170 * 2 * 2) + (85 + 170 * 1)  # 1568x1176 -> 1024x768: 2x2 tiles
    assert usage["prompt_tokens"] == words + cost
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_low_detail_costs_85_tokens(openai: FakeOpenAI) -> None:
    body = {"model": "vision-test", "messages": ask("x", data_url(picture(64, 64)), detail="low")}
    response = await post(f"{openai.base_url}/chat/completions", body, openai_auth(openai))
    assert response.json()["usage"]["prompt_tokens"] == (4 + 2) + (4 + 1) + 85
    assert openai.received_images[0].detail == "low"


async def test_streaming_with_pictures_says_the_same(openai: FakeOpenAI) -> None:
    body = {
        "model": "vision-test",
        "messages": ask("and now?", data_url(picture(800, 600))),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = await stream(f"{openai.base_url}/chat/completions", body, openai_auth(openai))
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == "I see 1 picture: 800x600 JPEG. Echo: and now?"
    assert events[-1]["choices"] == []
    assert events[-1]["usage"]["prompt_tokens"] == (4 + 2) + (4 + 2) + 85 + 170 * 4
    assert len(openai.received_images) == 1


async def test_a_text_model_refuses_pictures_as_openai_does(openai: FakeOpenAI) -> None:
    body = {"model": "gpt-test", "messages": ask("what is it?", data_url(picture(10, 10)))}
    response = await post(f"{openai.base_url}/chat/completions", body, openai_auth(openai))
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": NOT_VISION,
            "type": "invalid_request_error",
            "param": "messages.[1].content.[1].type",
            "code": None,
        }
    }
    assert openai.received_images == []


async def test_text_turns_are_unchanged(openai: FakeOpenAI) -> None:
    body = {"model": "vision-test", "messages": [{"role": "user", "content": "hello there"}]}
    response = await post(f"{openai.base_url}/chat/completions", body, openai_auth(openai))
    assert response.json()["choices"][0]["message"]["content"] == "Echo: hello there"
    parts = [{"type": "text", "text": "hello"}, {"type": "text", "text": "there"}]
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": parts}]}
    response = await post(f"{openai.base_url}/chat/completions", body, openai_auth(openai))
    assert response.json()["choices"][0]["message"]["content"] == "Echo: hello there"


JPEG = picture(40, 30)
URL = "messages[1].content[1].image_url.url"
EXPECTED = "Expected a base64-encoded data URL with an image MIME type"


@pytest.mark.parametrize(
    ("part", "status", "message", "param", "code"),
    [
        (
            {"type": "image_url", "image_url": data_url(JPEG)},
            400,
            "Invalid type for 'messages[1].content[1].image_url': expected an object, but got a "
            "string instead.",
            "messages[1].content[1].image_url",
            "invalid_type",
        ),
        (
            {"type": "image_url", "image_url": {}},
            400,
            "Missing required parameter: 'messages[1].content[1].image_url.url'.",
            "messages[1].content[1].image_url.url",
            "missing_required_parameter",
        ),
        (
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            400,
            "Error while downloading https://example.com/cat.jpg.",
            None,
            "invalid_image_url",
        ),
        (
            {"type": "image_url", "image_url": {"url": base64.b64encode(JPEG).decode()}},
            400,
            f"Invalid image URL: '{URL}'. {EXPECTED}",
            URL,
            "invalid_value",
        ),
        (
            {"type": "image_url", "image_url": {"url": data_url(JPEG, "image/bmp")}},
            400,
            "but got unsupported MIME type 'image/bmp'.",
            URL,
            "invalid_value",
        ),
        (
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,"}},
            400,
            "but got empty base64-encoded bytes.",
            URL,
            "invalid_value",
        ),
        (
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@not base64@@"}},
            400,
            "Invalid base64 image_url.",
            URL,
            None,
        ),
        (
            {"type": "image_url", "image_url": {"url": data_url(b"plain text, not a picture")}},
            400,
            UNSUPPORTED_IMAGE,
            None,
            "invalid_image_format",
        ),
        (
            {"type": "image_url", "image_url": {"url": data_url(JPEG[: len(JPEG) // 2])}},
            400,
            UNSUPPORTED_IMAGE,
            None,
            "invalid_image_format",
        ),
        (
            {"type": "image_url", "image_url": {"url": data_url(picture(8, 8, "TIFF"))}},
            400,
            UNSUPPORTED_IMAGE,
            None,
            "invalid_image_format",
        ),
        (
            {"type": "image_url", "image_url": {"url": data_url(JPEG), "detail": "max"}},
            400,
            "Invalid value: 'max'. Supported values are: 'auto', 'low', and 'high'.",
            "messages[1].content[1].image_url.detail",
            "invalid_value",
        ),
        (
            {"type": "picture", "url": data_url(JPEG)},
            400,
            "Invalid value: 'picture'. Supported values are: 'text', 'image_url', 'input_audio', "
            "'refusal', 'audio', and 'file'.",
            "messages[1].content[1].type",
            "invalid_value",
        ),
        (
            {"type": "text"},
            400,
            "Missing required parameter: 'messages[1].content[1].text'.",
            "messages[1].content[1].text",
            "missing_required_parameter",
        ),
        (
            {"image_url": {"url": data_url(JPEG)}},
            400,
            "Missing required parameter: 'messages[1].content[1].type'.",
            "messages[1].content[1].type",
            "missing_required_parameter",
        ),
    ],
)
async def test_malformed_parts_get_openais_errors(
    openai: FakeOpenAI,
    part: dict[str, Any],
    status: int,
    message: str,
    param: str | None,
    code: str | None,
) -> None:
    messages = ask("look")
    messages[1]["content"].append(part)
    body = {"model": "vision-test", "messages": messages}
    response = await post(f"{openai.base_url}/chat/completions", body, openai_auth(openai))
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error["message"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert openai.received_images == []


async def test_pictures_only_in_user_messages(openai: FakeOpenAI) -> None:
    image = {"type": "image_url", "image_url": {"url": data_url(JPEG)}}
    body = {"model": "vision-test", "messages": [{"role": "system", "content": [image]}]}
    response = await post(f"{openai.base_url}/chat/completions", body, openai_auth(openai))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].content[0].type"


async def test_content_must_be_a_string_or_parts(openai: FakeOpenAI) -> None:
    body = {"model": "vision-test", "messages": [{"role": "user", "content": {"text": "hi"}}]}
    response = await post(f"{openai.base_url}/chat/completions", body, openai_auth(openai))
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "Invalid type for 'messages[0].content': expected one of a string or array of objects, "
        "but got an object instead."
    )


# --- FakeYandex's OpenAI-compatible surface -------------------------------------------------


def gemma(fake: FakeYandex) -> str:
    return f"gpt://{fake.folder_id}/gemma-3-27b-it/latest"


@pytest.mark.parametrize("auth", ["Bearer api-key", "Api-Key api-key", "Bearer iam"])
async def test_yandex_vision_model_sees_the_picture(yandex: FakeYandex, auth: str) -> None:
    scheme, _, which = auth.partition(" ")
    secret = yandex.api_key if which == "api-key" else yandex.iam_token
    headers = {"Authorization": f"{scheme} {secret}", "OpenAI-Project": yandex.folder_id}
    sent = picture(896, 672)
    body = {"model": gemma(yandex), "messages": ask("что это?", data_url(sent))}
    response = await post(f"{yandex.llm_url}/v1/chat/completions", body, headers)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == (
        "I see 1 picture: 896x672 JPEG. Echo: что это?"
    )
    assert answer["usage"]["prompt_tokens"] == (4 + 2) + (4 + 2) + 256
    (received,) = yandex.received_images
    assert received.data == sent and received.model == gemma(yandex)


async def test_yandex_streams_sse_with_usage(yandex: FakeYandex) -> None:
    headers = {"Authorization": f"Bearer {yandex.api_key}"}  # OpenAI-Project is optional
    body = {
        "model": f"gpt://{yandex.folder_id}/qwen2.5-vl-32b-instruct/latest",
        "messages": ask("and?", data_url(picture(50, 40, "PNG"), "image/png")),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = await stream(f"{yandex.llm_url}/v1/chat/completions", body, headers)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == "I see 1 picture: 50x40 PNG. Echo: and?"
    assert events[-1]["usage"]["prompt_tokens"] == (4 + 2) + (4 + 1) + 256
    assert yandex.received_images[0].format == "PNG"


@pytest.mark.parametrize(
    ("headers", "model", "status", "message"),
    [
        ({"Authorization": "Bearer wrong"}, "gemma", 401, "Unknown api key 'wrong'"),
        ({"Authorization": ""}, "gemma", 401, "The request is missing the Authorization header"),
        (
            {"OpenAI-Project": "b1gotherfolder"},
            "gemma",
            403,
            "Permission to [resource-manager.folder b1gotherfolder] denied",
        ),
        (
            {},
            "gpt://b1gotherfolder/gemma-3-27b-it/latest",
            403,
            "Permission to [resource-manager.folder b1gotherfolder] denied",
        ),
        ({}, "gemma-3-27b-it", 400, "Invalid model URI gemma-3-27b-it"),
        ({}, "gpt://{folder}/no-such-model/latest", 404, "not found"),
        ({}, "gpt://{folder}/yandexgpt/latest", 400, NOT_VISION),
    ],
)
async def test_yandex_refusals_are_openai_shaped(
    yandex: FakeYandex, headers: dict[str, str], model: str, status: int, message: str
) -> None:
    headers = {"Authorization": f"Api-Key {yandex.api_key}"} | headers
    model = gemma(yandex) if model == "gemma" else model.format(folder=yandex.folder_id)
    body = {"model": model, "messages": ask("hi", data_url(JPEG))}
    response = await post(f"{yandex.llm_url}/v1/chat/completions", body, headers)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert message in error["message"]
    assert yandex.received_images == []


async def test_yandex_text_models_answer_text(yandex: FakeYandex) -> None:
    headers = {"Authorization": f"Api-Key {yandex.api_key}"}
    body = {
        "model": f"gpt://{yandex.folder_id}/yandexgpt/latest",
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 2,
    }
    response = await post(f"{yandex.llm_url}/v1/chat/completions", body, headers)
    choice = response.json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("Echo: hello", "length")


async def test_yandex_faults_answer_in_openais_shape(yandex: FakeYandex) -> None:
    yandex.inject(Fault("status", status=429, retry_after=2), path="/v1/chat/completions")
    headers = {"Authorization": f"Api-Key {yandex.api_key}"}
    body = {"model": gemma(yandex), "messages": ask("hi")}
    response = await post(f"{yandex.llm_url}/v1/chat/completions", body, headers)
    assert (response.status_code, response.headers["Retry-After"]) == (429, "2")
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    # The native API keeps its own error shape.
    native = await post(
        f"{yandex.llm_url}/foundationModels/v1/completion", {}, {"Authorization": "Bearer x"}
    )
    assert native.json()["error"]["grpcCode"] == 16


async def test_yandex_stream_faults_apply(yandex: FakeYandex) -> None:
    yandex.inject(Fault("content_filter", after=1), path="/v1/chat/completions")
    headers = {"Authorization": f"Api-Key {yandex.api_key}"}
    body = {"model": gemma(yandex), "messages": ask("hi", data_url(JPEG)), "stream": True}
    events = await stream(f"{yandex.llm_url}/v1/chat/completions", body, headers)
    finishes = [e["choices"][0]["finish_reason"] for e in events]
    assert finishes[-1] == "content_filter" and finishes.count("content_filter") == 1
    assert "Echo" not in "".join(e["choices"][0]["delta"].get("content") or "" for e in events)

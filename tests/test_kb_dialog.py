"""Templates with ``knowledge:``: retrieval in the turn, where passages go, sources, storage.

Real SQLite + sqlite-vec, the real e5 model; the echo model shows what the model was sent."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from adapters.telegram import TelegramApp, TelegramSettings
from adapters.telegram.runner import Runner
from bot.dialog import DialogManager, stored_sources
from bot.errors import PromptError
from bot.events import FinalText, Incoming, Message, Notice, ReplyEvent, Source, sources_line
from bot.kb.embedders import Embedder, LocalE5Embedder, Vector
from bot.kb.retrieval import Retriever
from bot.models.base import GenerationOptions, TextModel
from bot.models.echo import EchoModel
from bot.models.local import LocalModel
from bot.prompts.library import PromptLibrary
from bot.prompts.loader import check_template, load_template
from bot.prompts.render import Passage, build_messages
from bot.stores.base import DialogStore, Turn
from tests.doubles import Recording, Scripted
from tests.fakes.telegram_server import FakeTelegram
from tests.kb_files import build_shop_kb, write_shop_docs

ROOT = Path(__file__).resolve().parents[1]
FMBOT = str(Path(sys.executable).parent / "fmbot")
PASSAGES = [
    Passage(1, "The warranty lasts two years.", "warranty.md", "Warranty"),
    Passage(2, "Returns within thirty days.", "returns.html", ""),
]


class CountingEmbedder(Embedder):
    """e5, recording the queries it embeds."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name = inner.name
        self.queries: list[str] = []

    async def embed_documents(self, texts: Sequence[str]) -> list[Vector]:
        return await self.inner.embed_documents(texts)

    async def embed_query(self, text: str) -> Vector:
        self.queries.append(text)
        return await self.inner.embed_query(text)

    async def dimension(self) -> int:
        return await self.inner.dimension()


@pytest.fixture(scope="module")
async def kb_dir(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Path]:
    yield await build_shop_kb(tmp_path_factory.mktemp("kb"))


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def template(tmp_path: Path, body: str) -> Path:
    return write(tmp_path / "prompts", "t", f"name: t\nknowledge: shop\n{body}")


# --- templates -----------------------------------------------------------------------------------


def test_knowledge_in_the_instruction_moves_next_to_the_message_for_the_local_model(
    tmp_path: Path,
) -> None:
    t = load_template(
        template(
            tmp_path,
            "instruction: |\n  Answer from:\n  {% for p in knowledge %}[{{ p.n }}] {{ p.text }}\n"
            "  {% endfor %}\n",
        )
    )
    remote = build_messages(t, "How long?", knowledge=PASSAGES)
    assert "[1] The warranty lasts two years." in remote[0].text
    assert remote[-1] == Message("user", "How long?")

    local = build_messages(t, "How long?", knowledge=PASSAGES, stable_prefix=True)
    other = build_messages(t, "And returns?", knowledge=PASSAGES[1:], stable_prefix=True)
    assert local[0] == other[0] == Message("system", "Answer from:")  # the same prefix
    assert local[-1].text == (
        "Context (cite passages as [n]):\n\n"
        "[1] warranty.md — Warranty\nThe warranty lasts two years.\n\n"
        "[2] returns.html\nReturns within thirty days.\n\nHow long?"
    )


def test_a_template_that_does_not_place_knowledge_gets_a_context_block(tmp_path: Path) -> None:
    t = load_template(template(tmp_path, "instruction: Be brief.\n"))
    messages = build_messages(t, "Q?", knowledge=PASSAGES)
    assert messages[0].text == "Be brief."
    assert messages[-1].text.startswith("Context (cite passages as [n]):\n\n[1] warranty.md")
    assert messages[-1].text.endswith("\n\nQ?")
    assert build_messages(t, "Q?", knowledge=[])[-1].text == "Q?"  # nothing found: no block


def test_knowledge_fields_are_checked(tmp_path: Path) -> None:
    listed = load_template(
        write(
            tmp_path, "a", "name: a\ninstruction: x\nknowledge: [shop, faq]\nknowledge_top_k: 2\n"
        )
    )
    assert (listed.knowledge, listed.knowledge_top_k) == (["shop", "faq"], 2)
    with pytest.raises(PromptError, match="not a knowledge base name"):
        load_template(write(tmp_path, "b", "name: b\ninstruction: x\nknowledge: ../etc\n"))
    with pytest.raises(PromptError, match="knowledge_top_k"):
        load_template(write(tmp_path, "c", "name: c\ninstruction: x\nknowledge_top_k: 0\n"))
    unused = load_template(
        write(tmp_path, "d", "name: d\ninstruction: '{{ knowledge }}'\n")  # no knowledge:
    )
    with pytest.raises(PromptError, match="'knowledge' is undefined"):
        check_template(unused)
    check_template(load_template(template(tmp_path, "task: '{{ knowledge[0].source }}'\n"
                                          "instruction: x\n")))  # fmt: skip


# --- turns ---------------------------------------------------------------------------------------


def grounded(
    tmp_path: Path,
    store: DialogStore,
    model: TextModel,
    retriever: Retriever,
    mode: str = "t",
    options: GenerationOptions | None = None,
) -> DialogManager:
    """A manager on the templates in ``tmp_path/prompts`` with ``retriever``."""
    library = PromptLibrary(tmp_path / "prompts")
    return DialogManager(
        store, model, library, default_mode=mode, retriever=retriever, options=options
    )


async def collect(manager: DialogManager, chat: str, text: str) -> list[ReplyEvent]:
    return [event async for event in manager.handle(Incoming(chat, text))]


async def test_a_turn_retrieves_shows_sources_and_stores_the_passages(
    tmp_path: Path, kb_dir: Path, store: DialogStore
) -> None:
    template(tmp_path, "instruction: Answer from the context.\nknowledge_top_k: 2\n")
    model = Recording(EchoModel(context_window=8192))
    embedder = CountingEmbedder(LocalE5Embedder())
    manager = grounded(tmp_path, store, model, Retriever(kb_dir, embedder))
    try:
        events = await collect(manager, "c", "Сколько дней идёт доставка посылки?")
        final = events[-1]
        assert isinstance(final, FinalText), events
        sent = model.requests[0][-1].text
        assert sent.startswith("Context (cite passages as [n]):\n\n[1] warranty.md — Delivery\n")
        assert sent.endswith("\n\nСколько дней идёт доставка посылки?")
        assert sources_line(final.sources).startswith("Sources: [1] warranty.md — Delivery; [2] ")
        assert final.sources[0] == Source(1, "warranty.md", "Delivery")
        assert "Sources" not in final.text  # a line of its own, not part of the reply

        turns = await store.read("c")
        assert turns[0].text == "Сколько дней идёт доставка посылки?"  # stored without context
        used = turns[1].meta["knowledge"]
        first = used[0]
        assert (first["n"], first["kb"], first["source"], first["heading"]) == (
            1, "shop", "warranty.md", "Delivery",
        )  # fmt: skip
        assert len(used) == 2 and used[0]["score"] >= used[1]["score"]

        # A short follow-up is searched together with the question before it.
        await collect(manager, "c", "а в Москве?")
        assert embedder.queries[-1] == "Сколько дней идёт доставка посылки?\nа в Москве?"
    finally:
        await manager.aclose()


async def test_the_reply_lists_only_the_passages_it_cites(
    tmp_path: Path, kb_dir: Path, store: DialogStore
) -> None:
    # The echo model repeats the message: "[2]" in it is what a citing model would write. The
    # passages go in the instruction (a remote model's), so the echo is the message alone.
    template(tmp_path, "instruction: 'From {{ knowledge | length }}'\nknowledge_top_k: 3\n")
    manager = grounded(tmp_path, store, EchoModel(), Retriever(kb_dir, LocalE5Embedder()))
    try:
        final = (await collect(manager, "c", "warranty claims, see [2]"))[-1]
        assert isinstance(final, FinalText)
        assert [s.n for s in final.sources] == [2]
    finally:
        await manager.aclose()


async def test_a_turn_without_knowledge_pays_nothing(tmp_path: Path, store: DialogStore) -> None:
    write(tmp_path / "prompts", "plain", "name: plain\ninstruction: x\n")
    embedder = CountingEmbedder(LocalE5Embedder())
    retriever = Retriever(tmp_path / "no-such-dir", embedder)
    manager = grounded(tmp_path, store, EchoModel(), retriever, mode="plain")
    try:
        final = (await collect(manager, "c", "hello"))[-1]
        assert isinstance(final, FinalText) and final.sources == ()
        assert embedder.queries == []
        assert isinstance(embedder.inner, LocalE5Embedder) and embedder.inner._model is None
    finally:
        await manager.aclose()


async def test_a_missing_knowledge_base_is_told_in_the_chat(
    tmp_path: Path, store: DialogStore
) -> None:
    template(tmp_path, "instruction: x\n")
    model = Recording(EchoModel())
    manager = grounded(tmp_path, store, model, Retriever(tmp_path / "kb", LocalE5Embedder()))
    try:
        events = await collect(manager, "c", "hello")
    finally:
        await manager.aclose()
    assert len(events) == 1 and isinstance(events[0], Notice)
    assert "no knowledge base 'shop'" in events[0].text and "fmbot kb add shop" in events[0].text
    assert model.requests == []  # no ungrounded answer


async def test_the_local_model_keeps_its_prefix_while_passages_change(
    tmp_path: Path, kb_dir: Path, store: DialogStore, local_model: LocalModel
) -> None:
    template(
        tmp_path,
        "instruction: |\n  Answer briefly from:\n  {% for p in knowledge %}{{ p.text }}\n"
        "  {% endfor %}\nknowledge_top_k: 1\n",
    )
    model = Recording(local_model)
    short = GenerationOptions(max_tokens=8, temperature=0)
    manager = grounded(tmp_path, store, model, Retriever(kb_dir, LocalE5Embedder()), options=short)
    try:
        await collect(manager, "c", "How long is the warranty?")
        await collect(manager, "c", "How do I clean the kettle?")
    finally:
        await manager.aclose()
    first, second = model.requests
    assert first[0] == second[0] == Message("system", "Answer briefly from:")
    assert "two-year warranty" in first[-1].text
    assert "vinegar" in second[-1].text
    # History holds the question as asked: passages live in the current message only.
    assert second[1] == Message("user", "How long is the warranty?")


def test_console_shows_the_sources_line(tmp_path: Path) -> None:
    docs = write_shop_docs(tmp_path / "docs")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FMBOT_", "OPENAI_"))}
    env |= {"FMBOT_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    run = {"env": env, "capture_output": True, "text": True, "timeout": 120}
    added = subprocess.run([FMBOT, "kb", "add", "support", str(docs)], **run)  # type: ignore[call-overload]
    assert added.returncode == 0, added.stderr
    done = subprocess.run(  # type: ignore[call-overload]
        [FMBOT, "console", "--mode", "support"],
        input="Куда отправить фото поломки?\n",
        **(run | {"env": env | {"FMBOT_TEXT_MODEL": "echo:"}}),
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "echo: Passages:"  # the shipped support template, with its passages
    assert "[1] warranty.md — Warranty > Claims" in done.stdout
    assert lines[-1].startswith("Sources: [1] warranty.md — Warranty > Claims; [2] ")


async def test_telegram_ends_the_reply_with_a_sources_line(
    tmp_path: Path, kb_dir: Path, store: DialogStore
) -> None:
    template(tmp_path, "instruction: x\nknowledge_top_k: 2\n")
    reply = Scripted(["The warranty lasts **two years** [1]."])
    manager = grounded(tmp_path, store, reply, Retriever(kb_dir, LocalE5Embedder()))
    async with FakeTelegram() as fake:
        settings = TelegramSettings(
            _env_file=None, TELEGRAM_BOT_TOKEN=fake.token, TELEGRAM_API_URL=fake.base_url
        )
        runner = Runner(TelegramApp(manager, settings), polling_timeout=1)
        task = asyncio.create_task(runner.run_polling(handle_signals=False))
        try:
            alice = fake.user(1002, "Alice")
            chat = fake.private_chat(alice)
            fake.push_text(chat, alice, "How long is the warranty?")
            await fake.wait_for(lambda: bool(fake.bot_messages(chat["id"])), 30)
        finally:
            runner.request_stop()
            await asyncio.wait_for(task, 15)
    text = fake.bot_messages(chat["id"])[0]["text"]
    assert text.startswith("The warranty lasts two years [1].\n\nSources: [1] warranty.md — ")
    assert "[2]" not in text.split("Sources:")[1]  # only the cited passage


def test_a_stored_reply_sent_again_gets_the_same_sources_line() -> None:
    meta = {
        "knowledge": [
            {"n": 1, "kb": "shop", "source": "warranty.md", "heading": "Warranty"},
            {"n": 2, "kb": "shop", "source": "returns.html", "heading": ""},
        ]
    }
    assert sources_line(stored_sources(Turn("assistant", "Two years.", meta=meta))) == (
        "Sources: [1] warranty.md — Warranty; [2] returns.html"
    )
    assert stored_sources(Turn("assistant", "Thirty days [2].", meta=meta)) == (
        Source(2, "returns.html", ""),
    )
    assert stored_sources(Turn("assistant", "Hello.")) == ()  # no knowledge: no line

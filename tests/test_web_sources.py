"""Sources of knowledge answers in ``fmbot web``'s API: the ``final`` event carries them, and a
stored conversation read back has them too. Real HTTP, a real knowledge base (``fmbot kb add``)
embedded by the fake OpenAI server, the shipped ``support`` template."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx

from tests.fakes import FakeOpenAI
from tests.test_web_api import TIMEOUT, send
from tests.web_server import SUPPORT_DOCS, add_support_kb, openai_env, serving

HEADINGS = {"warranty.md": "Warranty", "returns.md": "Returns <img src=x id=injected>"}


async def test_a_knowledge_answer_names_its_sources_also_when_read_back(tmp_path: Path) -> None:
    async with FakeOpenAI() as openai:
        # In a thread: the command embeds through the fake, which answers on this loop.
        docs = tmp_path / "docs"
        env = await asyncio.to_thread(add_support_kb, openai_env(tmp_path, openai), docs)
        with serving(env, tmp_path) as web:
            async with httpx.AsyncClient(base_url=web.url, timeout=TIMEOUT) as client:
                await send(client, "kb", "/mode support")
                # The fake echoes the prompt's message, with its numbered passages: the reply
                # cites them all, so every passage given is a source, in the prompt's order.
                got = await send(client, "kb", "How long is the warranty?")
                name, final = got[-1]
                assert name == "final" and final["status"] == "complete", got
                given = re.findall(r"\[(\d)\] (\S+\.md) — ", str(final["text"]))
                assert sorted(g[1] for g in given) == sorted(SUPPORT_DOCS), final
                expected = [
                    {"n": int(n), "source": source, "heading": HEADINGS[source]}
                    for n, source in given
                ]
                assert final["sources"] == expected
                assert "Sources" not in str(final["text"])  # beside the reply, not in it

                openai.reply = "Thirty days, see [2]."  # a reply that cites one passage
                got = await send(client, "kb", "And returns?")
                assert got[-1][1]["sources"] == [expected[1]]

                openai.reply = None
                await send(client, "kb", "/mode default")
                plain = await send(client, "kb", "Hello")  # not a knowledge answer: none
                assert plain[-1][1]["sources"] == []

                turns = (await client.get("/api/chats/kb")).json()["turns"]
                assert [t["sources"] for t in turns if t["role"] == "assistant"] == [
                    expected,
                    [expected[1]],
                    [],
                ]
                assert all(t["sources"] == [] for t in turns if t["role"] == "user")

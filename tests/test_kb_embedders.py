"""Knowledge-base embedders: the bundled e5 for real, Yandex and OpenAI against fakes over HTTP."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bot.errors import ConfigError
from bot.kb.embedders import (
    OPENAI_BATCH,
    YANDEX_CONCURRENCY,
    Embedder,
    LocalE5Embedder,
    OpenAIEmbedder,
    YandexEmbedder,
    create_embedder,
)
from bot.settings import Settings, load_settings
from tests.fakes import FakeOpenAI, FakeYandex, Fault
from tests.fakes.openai_server import EMBEDDING_DIM as OPENAI_DIM
from tests.fakes.openai_server import fake_embedding as openai_embedding
from tests.fakes.yandex_server import EMBEDDING_DIM as YANDEX_DIM
from tests.fakes.yandex_server import fake_embedding as yandex_embedding

EMBEDDING = "/foundationModels/v1/textEmbedding"


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


@pytest.fixture(scope="module")
async def e5() -> AsyncIterator[Embedder]:
    embedder = create_embedder(Settings())
    yield embedder
    await embedder.aclose()


def test_settings_default_to_the_bundled_e5_and_a_kb_folder_in_home(tmp_path: Path) -> None:
    settings = load_settings(FMBOT_HOME=str(tmp_path), FMBOT_PROMPTS_DIR=str(tmp_path))
    assert settings.embed_model == "local:e5"
    assert settings.knowledge_dir == tmp_path / "kb"
    assert isinstance(create_embedder(settings), LocalE5Embedder)
    moved = load_settings(FMBOT_HOME=str(tmp_path), FMBOT_KB_DIR=str(tmp_path / "shared"))
    assert moved.knowledge_dir == tmp_path / "shared"


@pytest.mark.parametrize("spec", ["local:bert", "e5", "openai:", "yandex:emb://", "cohere:x"])
def test_an_unknown_embedder_is_a_config_error_naming_the_setting(spec: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(FMBOT_EMBED_MODEL=spec)
    assert "FMBOT_EMBED_MODEL" in str(caught.value)
    assert "local:e5" in str(caught.value)  # what to use instead


def test_a_yandex_embedder_without_credentials_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("YANDEX_API_KEY", "YANDEX_IAM_TOKEN", "YANDEX_FOLDER_ID"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError) as caught:
        load_settings(FMBOT_EMBED_MODEL="yandex:text-search-doc/latest", _env_file=None)
    assert "YANDEX_FOLDER_ID" in str(caught.value)


async def test_e5_finds_english_passages_for_russian_questions_and_back(e5: Embedder) -> None:
    assert e5.name == "local:e5"
    assert await e5.dimension() == 384
    english = [
        "The warranty lasts two years from the date of purchase.",
        "Parcels are delivered in three to five working days.",
        "You can return an item within thirty days for a refund.",
    ]
    russian = [
        "Гарантия действует два года со дня покупки.",
        "Посылки доставляются за три–пять рабочих дней.",
        "Товар можно вернуть в течение тридцати дней и получить деньги.",
    ]
    questions_ru = [
        "Сколько длится гарантия?",
        "Сколько дней идёт доставка посылки?",
        "Как вернуть товар и получить деньги назад?",
    ]
    questions_en = ["How long is the warranty?", "How long does delivery take?", "Can I return it?"]
    for passages, questions in ((english, questions_ru), (russian, questions_en)):
        vectors = await e5.embed_documents(passages)
        assert [len(v) for v in vectors] == [384] * 3
        for expected, question in enumerate(questions):
            q = await e5.embed_query(question)
            scores = [cosine(q, v) for v in vectors]
            assert scores.index(max(scores)) == expected, (question, scores)


async def test_e5_batches_give_the_same_vectors_as_single_texts(e5: Embedder) -> None:
    texts = [f"Passage number {i} about topic {i % 7}." for i in range(40)]  # > one batch
    together = await e5.embed_documents(texts)
    alone = [(await e5.embed_documents([t]))[0] for t in (texts[0], texts[39])]
    assert len(together) == 40
    assert cosine(together[0], alone[0]) > 0.999
    assert cosine(together[39], alone[1]) > 0.999
    # The query prefix makes a different vector from the passage of the same words.
    assert cosine(await e5.embed_query(texts[0]), together[0]) < 0.999


async def embed_all(
    settings: Settings, kind: type[Embedder], texts: list[str], question: str
) -> tuple[list[list[float]], list[float], int]:
    """Documents, a query and the dimension from the embedder ``settings`` make."""
    embedder = create_embedder(settings)
    assert isinstance(embedder, kind)
    try:
        docs = await embedder.embed_documents(texts)
        return docs, await embedder.embed_query(question), await embedder.dimension()
    finally:
        await embedder.aclose()


@pytest.fixture
async def yandex() -> AsyncIterator[FakeYandex]:
    async with FakeYandex() as server:
        yield server


async def test_yandex_embeds_documents_and_queries_with_the_search_pair(yandex: FakeYandex) -> None:
    settings = Settings(
        FMBOT_EMBED_MODEL="yandex:text-search-doc/latest",
        YANDEX_API_KEY=yandex.api_key,
        YANDEX_FOLDER_ID=yandex.folder_id,
        YANDEX_FM_URL=yandex.llm_url,
    )
    texts = [f"document {i}" for i in range(9)]
    docs, query, dimension = await embed_all(settings, YandexEmbedder, texts, "a question")
    assert dimension == YANDEX_DIM
    doc_uri = f"emb://{yandex.folder_id}/text-search-doc/latest"
    query_uri = f"emb://{yandex.folder_id}/text-search-query/latest"
    assert docs == [yandex_embedding(t, doc_uri) for t in texts]  # in order, though concurrent
    assert query == yandex_embedding("a question", query_uri)
    uris = [r.body["modelUri"] for r in yandex.requests if r.path.endswith(EMBEDDING)]
    assert uris == [doc_uri] * 9 + [query_uri]


@pytest.fixture
async def openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


async def test_openai_embeds_in_batches_on_the_configured_server(openai: FakeOpenAI) -> None:
    settings = Settings(
        FMBOT_EMBED_MODEL="openai:embed-test",
        OPENAI_BASE_URL=openai.base_url,
        OPENAI_API_KEY=openai.api_key,
    )
    texts = [f"chunk {i}" for i in range(OPENAI_BATCH + 6)]
    docs, query, dimension = await embed_all(settings, OpenAIEmbedder, texts, "question")
    assert dimension == OPENAI_DIM
    assert docs == [openai_embedding(t) for t in texts]
    assert query == openai_embedding("question")
    sizes = sorted(len(r.body["input"]) for r in openai.requests)
    assert sizes == [1, 6, OPENAI_BATCH]
    assert {r.body["model"] for r in openai.requests} == {"embed-test"}


@dataclass
class CountingYandex(FakeYandex):
    """Answers embeddings slowly and counts how many are in progress at once."""

    in_flight: int = 0
    most_in_flight: int = 0

    async def _do_embedding(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.05)
            return await super()._do_embedding(request, body)
        finally:
            self.in_flight -= 1


async def test_yandex_requests_are_bounded_and_a_rate_limit_is_waited_out() -> None:
    async with CountingYandex() as fake:
        fake.inject(Fault("status", status=429, retry_after=0.3), path=EMBEDDING, times=1)
        settings = Settings(
            FMBOT_EMBED_MODEL="yandex:text-search-doc/latest",
            YANDEX_API_KEY=fake.api_key,
            YANDEX_FOLDER_ID=fake.folder_id,
            YANDEX_FM_URL=fake.llm_url,
        )
        texts = [f"passage {i}" for i in range(3 * YANDEX_CONCURRENCY)]
        started = time.monotonic()
        async with asyncio.timeout(30):
            docs, _, _ = await embed_all(settings, YandexEmbedder, texts, "q")
        elapsed = time.monotonic() - started
    doc_uri = f"emb://{fake.folder_id}/text-search-doc/latest"
    assert docs == [yandex_embedding(t, doc_uri) for t in texts]  # the 429'd one too
    # Concurrent, but never more than the bound (the rate-limited request keeps its slot while
    # it waits, so the others ran 3 at a time).
    assert 1 < fake.most_in_flight <= YANDEX_CONCURRENCY
    assert elapsed >= 0.3  # the Retry-After was honoured

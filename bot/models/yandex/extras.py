"""Yandex Foundation Models endpoints that are not chat: tokenizer, embeddings, classification.

Each is one synchronous request; all take a shared :class:`YandexClient`. Model names follow the
same rules as specs: a short name (``text-search-doc/latest``) or a full URI (``emb://...``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from bot.errors import ModelError
from bot.model_spec import parse_model_spec
from bot.models.yandex.client import YandexClient

TOKENIZE = "/foundationModels/v1/tokenize"
TEXT_EMBEDDING = "/foundationModels/v1/textEmbedding"
FEW_SHOT_CLASSIFICATION = "/foundationModels/v1/fewShotTextClassification"
MAX_LABELS = 20  # the service's limit for few-shot classification


@dataclass(frozen=True, slots=True)
class Token:
    id: int
    text: str
    special: bool


def _uri(client: YandexClient, model: str, scheme: str) -> str:
    return parse_model_spec(
        model, folder_id=client.folder_id, schemes=(scheme,), setting="model"
    ).uri


def _unreadable(client: YandexClient, what: str) -> ModelError:
    return ModelError(f"{client.service.title} sent {what} fmbot cannot read.")


async def tokenize(
    client: YandexClient, text: str, *, model: str = "yandexgpt-lite/latest"
) -> list[Token]:
    """Split ``text`` into the model's tokens."""
    answer = await client.post(TOKENIZE, {"modelUri": _uri(client, model, "gpt"), "text": text})
    try:
        return [
            Token(id=int(t["id"]), text=str(t.get("text", "")), special=bool(t.get("special")))
            for t in answer["tokens"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise _unreadable(client, "tokens") from exc


async def embed(
    client: YandexClient,
    text: str,
    *,
    kind: Literal["doc", "query"] = "doc",
    model: str | None = None,
) -> list[float]:
    """The embedding of ``text``: ``doc`` for texts you store, ``query`` for search queries."""
    uri = _uri(client, model or f"text-search-{kind}/latest", "emb")
    answer = await client.post(TEXT_EMBEDDING, {"modelUri": uri, "text": text})
    try:
        return [float(x) for x in answer["embedding"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise _unreadable(client, "an embedding") from exc


async def classify(
    client: YandexClient,
    text: str,
    labels: Iterable[str],
    *,
    task_description: str,
    samples: Iterable[tuple[str, str]] = (),
    model: str = "yandexgpt-lite/latest",
) -> list[tuple[str, float]]:
    """Few-shot classification: ``[(label, confidence)]``, most confident first.

    ``samples`` are ``(text, label)`` examples that steer the model.
    """
    labels = list(labels)
    if not labels or len(labels) > MAX_LABELS:
        raise ValueError(f"give 1 to {MAX_LABELS} labels, not {len(labels)}")
    body: dict[str, Any] = {
        "modelUri": _uri(client, model, "cls"),
        "taskDescription": task_description,
        "labels": labels,
        "text": text,
    }
    sample_list = [{"text": t, "label": label} for t, label in samples]
    if sample_list:
        body["samples"] = sample_list
    answer = await client.post(FEW_SHOT_CLASSIFICATION, body)
    try:
        predictions: list[Mapping[str, Any]] = answer["predictions"]
        result = [(str(p["label"]), float(p["confidence"])) for p in predictions]
    except (KeyError, TypeError, ValueError) as exc:
        raise _unreadable(client, "a classification") from exc
    return sorted(result, key=lambda pair: pair[1], reverse=True)

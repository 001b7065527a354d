"""Yandex Cloud Foundation Models backends (YandexGPT, YandexART, embeddings, classifiers)."""

from bot.model_spec import parse_model_spec
from bot.models.yandex.client import (
    PollPolicy,
    YandexClient,
    YandexCredentials,
)
from bot.models.yandex.extras import Token, classify, embed, tokenize
from bot.models.yandex.image import YandexImageModel
from bot.models.yandex.text import YandexTextModel

__all__ = [
    "PollPolicy",
    "Token",
    "YandexClient",
    "YandexCredentials",
    "YandexImageModel",
    "YandexTextModel",
    "classify",
    "embed",
    "parse_model_spec",
    "tokenize",
]

"""Deciding whether a plain message asks for a picture, so it can go to the image model.

Three classifiers, one interface (``await classifier(text) -> bool``):

* :class:`RuleClassifier` — regular expressions for English and Russian requests ("draw a cat",
  "нарисуй кота"); free and instant, and the fallback when another classifier fails;
* :class:`YandexClassifier` — Yandex few-shot text classification;
* :class:`ModelClassifier` — a short yes/no classification prompt to the text model.
"""

from __future__ import annotations

import abc
import logging
import re
from typing import TYPE_CHECKING

from bot.errors import ModelError
from bot.events import Message
from bot.models.base import GenerationOptions, TextModel

if TYPE_CHECKING:
    from bot.models.yandex.client import YandexClient

log = logging.getLogger(__name__)

_RULES = re.compile(
    r"""
    ^\s*(?:please\s+|pls\s+|can\s+you\s+|could\s+you\s+)?
        (?:draw|paint|sketch)\b
        # ...but not the figures of speech: "draw up a contract", "draw a conclusion".
        (?!\s+(?:up|on|from|back|near|out|attention|parallels?
            |(?:a\s+|the\s+|some\s+|any\s+)?(?:conclusions?|line|comparison|distinction)))
    | \b(?:generate|create|make|show\s+me|give\s+me)\s+(?:me\s+)?(?:an?\s+)?
        (?:image|picture|pic|photo|drawing|illustration|painting|sketch)\b
    | \b(?:image|picture|photo|drawing|illustration|painting)\s+of\b
    | (?:^|\s)(?:по)?нарису(?:й|йте)\b | \bизобрази(?:те)?\b
    | \b(?:сгенерируй|сгенерировать|создай|сделай|покажи)(?:те)?\s+
        (?:мне\s+)?(?:картинк|изображени|рисун|фото|иллюстраци)
    | \b(?:картинк[ауи]|изображени[ея]|рисунок)\s+(?:с|со|про)\b
    """,
    re.IGNORECASE | re.VERBOSE,
)

IMAGE_LABEL = "image request"
TEXT_LABEL = "text request"
_TASK = "Decide whether the user asks to draw or generate a picture, or asks for a text answer."
_SAMPLES = (
    ("draw a lighthouse on a cliff", IMAGE_LABEL),
    ("нарисуй кота в шляпе", IMAGE_LABEL),
    ("generate a picture of a red car", IMAGE_LABEL),
    ("what is the capital of France?", TEXT_LABEL),
    ("напиши описание товара: кружка", TEXT_LABEL),
    ("explain how photosynthesis works", TEXT_LABEL),
)


class ImageIntentClassifier(abc.ABC):
    name: str

    @abc.abstractmethod
    async def __call__(self, text: str) -> bool:
        """True when ``text`` asks for a picture."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Default: nothing to release."""


class RuleClassifier(ImageIntentClassifier):
    name = "rules"

    async def __call__(self, text: str) -> bool:
        return matches_rules(text)


def matches_rules(text: str) -> bool:
    return bool(_RULES.search(text))


class YandexClassifier(ImageIntentClassifier):
    """Few-shot classification; falls back to the rules when the service fails."""

    name = "yandex"

    def __init__(self, client: YandexClient, threshold: float = 0.5) -> None:
        self.client = client
        self.threshold = threshold

    async def __call__(self, text: str) -> bool:
        from bot.models.yandex.extras import classify

        try:
            ranked = await classify(
                self.client,
                text[:1000],
                [IMAGE_LABEL, TEXT_LABEL],
                task_description=_TASK,
                samples=_SAMPLES,
            )
        except ModelError as exc:
            log.warning("image intent classification failed, using rules: %s", exc)
            return matches_rules(text)
        label, confidence = ranked[0]
        return label == IMAGE_LABEL and confidence >= self.threshold

    async def aclose(self) -> None:
        await self.client.aclose()


class ModelClassifier(ImageIntentClassifier):
    """Asks the text model; the rules decide when its answer is neither yes nor no."""

    name = "model"
    _options = GenerationOptions(temperature=0, max_tokens=3)

    def __init__(self, model: TextModel) -> None:
        self.model = model

    async def __call__(self, text: str) -> bool:
        messages = [
            Message(
                "system",
                "Answer only 'yes' or 'no'. Does the user ask to draw, paint or generate a "
                "picture or image?",
            ),
            Message("user", text[:1000]),
        ]
        try:
            answer = (await self.model.respond(messages, self._options)).strip().lower()
        except ModelError as exc:
            log.warning("image intent classification failed, using rules: %s", exc)
            return matches_rules(text)
        if answer.startswith(("yes", "да")):
            return True
        if answer.startswith(("no", "нет")):
            return False
        return matches_rules(text)

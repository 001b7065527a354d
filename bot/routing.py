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

# Every rule is anchored at the start of the message: a request for a picture is an imperative
# ("draw a cat", "нарисуй кота") or a polite form of one ("can you draw a cat?", "можешь нарисовать
# кота?"). The same words later in a sentence belong to questions and statements about pictures
# ("how do I create an image of my disk?", "who wrote The Picture of Dorian Gray?"), which the text
# model answers. A request the rules miss still gets an answer, and /image always draws.

# Greetings and follow-up words may come first: "hi, draw a cat", "now draw it in blue",
# "а теперь нарисуй собаку".
_OPENER = r"""
    (?:(?:hi|hello|hey|ok(?:ay)?|so|now|and|also|then
        |привет|здравствуй(?:те)?|ну|а|и|теперь|ещё|еще|тогда|слушай)\b[\s,.!]*+){0,3}+
"""

# Polite English forms: "please draw", "can you draw", "could you please generate",
# "I want you to draw".
_EN_POLITE = r"""
    (?:(?:please|pls|plz|kindly)[\s,]+)?
    (?:(?:can|could|would|will)\s+(?:you|u)[\s,]+(?:please[\s,]+)?
      | i(?:\s+want|\s+need|\s+would\s+like|['’]d\s+like)\s+you\s+to\s+
    )?
"""

# "draw / paint / sketch <something>". The verbs have other senses, excluded by what follows:
_EN_DRAW = r"""
    (?:draw|paint|sketch)\s+
    (?!(?:
        # figures of speech: "draw up a contract", "draw a conclusion", "draw blood"
        (?:up|on|from|back|near|out|in|down|together|attention|parallels?|blood|water|power
          |current|money|cash|breath|straws|lots|inspiration|criticism|fire|interest)\b
      | (?:(?:a|the|some|any|my)\s+)?(?:conclusions?|line|comparison|distinction|cards?
          |salary|pension|blank)\b
        # the noun: "paint is peeling off my wall", "Sketch keeps crashing", "draw or win?"
      | (?:is|was|are|were|has|had|keeps|won['’]t|doesn['’]t|didn['’]t|will|or|vs|versus
          |peel\w*|chip\w*|crack\w*|bubbl\w*|fad\w*|dr(?:y|ies|ied|ying))\b
        # decorating, not pictures: "paint the walls", "paint my nails"
      | (?:the|my|our|your|a)\s+(?:walls?|room|house|fence|ceiling|doors?|floors?|kitchen
          |bedroom|car|nails|furniture)\b
    ))
"""

# Words that make "image" technical (a disk, VM or container image, an HTML image): create,
# make and generate then mean something else. Checked from the verb to the end of the message.
_NOT_TECHNICAL = r"""
    (?![\s\S]*\b(?:docker\w*|containers?|disks?|drives?|partitions?|vms?|virtual\s+machines?
        |iso|backups?|snapshots?|boot\w*|usb|dd|os|kubernetes|k8s|registry|instances?|servers?
        |ami|qcow2?|vmdk|html|css|javascript|python|react
        |докер\w*|контейнер\w*|диск(?:а|е|и|ом|ов)?|виртуальн\w*|вм|образ\w*|сервер\w*
        |бэкап\w*|резервн\w*)\b)
"""

# "generate / create / make / show me / give me an image of ...", "I'd like a picture of ...".
# Only a new picture ("a", "some", "two" or nothing before the noun): "make this picture smaller"
# and "show me the picture of ..." are about an existing one. The noun must end the phrase
# ("an image of", "an image with", "a picture, please"), so "create an image tag" and
# "make a picture frame" stay text.
_EN_MAKE = r"""
    (?:generate|create|make|produce|design|show|give
      |i(?:\s+want|\s+need|\s+would\s+like|['’]d\s+like))\s+
    (?:(?:me|us)\s+)?
    (?:(?:an?|some|another|one|two|three|four|\d+)\s+)?
    (?:(?!(?:the|this|that|these|those|my|your|our|his|her|its|their)\b)[\w-]+\s+){0,3}?
    (?:image|picture|pic|photo|drawing|illustration|painting|sketch|portrait|artwork
      |wallpaper)s?
    (?=\s*$|\s*[,.:!]|\s+(?:of|with|showing|depicting|that|which|where|for|about|in|on|from
        |to|based|please)\b)
"""

# Polite Russian: "можешь нарисовать", "не могли бы вы", "ты можешь, пожалуйста, ...".
# The verb after them is the infinitive.
_RU_MODAL = r"""
    (?:(?:ты|вы)\s+)?(?:не\s+)?
    (?:можешь|можете|сможешь|сможете|мог(?:ла|ли)?\s+бы(?:\s+(?:ты|вы))?)[\s,]+
    (?:пожалуйста[\s,]+)?
"""

# "нарисуй(те)", "изобрази(те)": only about pictures, whatever follows.
_RU_DRAW = r"(?:(?:на)?рису(?:й|йте)|изобрази(?:те)?|" + _RU_MODAL + r"(?:нарисовать|изобразить))\b"

# "сгенерируй / создай / сделай / покажи (мне) картинку ...": a new picture, not "эту картинку" or
# "мою фотографию".
_RU_MAKE = (
    r"(?:(?:сгенерируй|создай|сделай|покажи)(?:те)?|"
    + _RU_MODAL
    + r"""(?:сгенерировать|создать|сделать|показать))\s+
    (?:(?:мне|нам)[\s,]+)?(?:пожалуйста[\s,]+)?
    (?:(?!(?:эт|мо[йяеюи]|тво|наш|ваш)\w*\b)[\w-]+[\s,]+){0,3}?
    (?:картинк|изображени|рисун|фот[ок]|иллюстраци)\w*
"""
)

_ENGLISH = f"{_EN_POLITE} (?: {_EN_DRAW} | {_NOT_TECHNICAL} {_EN_MAKE} )"
_RUSSIAN = rf"(?:пожалуйста[\s,]+)? (?: {_RU_DRAW} | {_NOT_TECHNICAL} {_RU_MAKE} )"
# "*+" and "{0,3}+" are possessive (no backtracking into them), and the message is matched from
# its start only, so even a very long message is checked in linear time.
_RULES = re.compile(rf"\W*+ {_OPENER} (?: {_ENGLISH} | {_RUSSIAN} )", re.IGNORECASE | re.VERBOSE)

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
    return bool(_RULES.match(text))


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

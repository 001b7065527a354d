"""Grading a cell: deterministic assertions, and the models that grade the others (the judge
for ``llm-rubric``, the embedder for ``similar``); the embedder also finds knowledge templates'
passages. Each is made only when the suite needs it, behind the cache when it is on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bot.batch.model import batch_settings, options_for
from bot.eval.assertions import Assertion, Outcome, Reply, check
from bot.eval.suite import LoadedSuite, uses
from bot.kb.embedders import Embedder
from bot.kb.retrieval import Retriever
from bot.models.base import TextModel
from bot.models.registry import get_text_model

if TYPE_CHECKING:
    from bot.settings import Settings

#: Grades an llm-rubric assertion (the judge): (assertion, reply, question) -> outcome.
Judge = Callable[[Assertion, str, str], Awaitable[Outcome]]
#: Grades a similar assertion (the embedder): (assertion, reply) -> outcome.
Similar = Callable[[Assertion, str], Awaitable[Outcome]]
#: Wraps a model (the cache) for one repeat: (model, repeat) -> model.
Wrap = Callable[[TextModel, int], TextModel]
EMBEDDINGS_DIR = "embeddings"


@dataclass(frozen=True, slots=True)
class GradedAssertion:
    assertion: Assertion
    outcome: Outcome


def cached(directory: Path) -> Wrap:
    """Models behind the reply cache in ``directory``."""
    from bot.eval.cache import CachedModel

    # The first repeat shares its replies with runs without --repeat; later ones are new samples.
    return lambda model, repeat: CachedModel(model, directory, f"repeat {repeat}" if repeat else "")


@dataclass(frozen=True, slots=True)
class Graders:
    """What grades the model-graded assertions; None where the suite has none of that type."""

    judge: Judge | None = None
    similar: Similar | None = None


async def grade(
    assertions: Iterable[Assertion], reply: Reply, message: str, graders: Graders
) -> list[GradedAssertion]:
    graded = []
    for assertion in assertions:
        if assertion.type == "llm-rubric":
            if graders.judge is None:
                outcome = Outcome(False, 0.0, "no judge model to grade it", error=True)
            else:
                outcome = await graders.judge(assertion, reply.text, message)
        elif assertion.type == "similar":
            if graders.similar is None:
                outcome = Outcome(False, 0.0, "no embedder to grade it", error=True)
            else:
                outcome = await graders.similar(assertion, reply.text)
        else:
            outcome = check(assertion, reply)
        graded.append(GradedAssertion(assertion, outcome))
    return graded


def grounded(loaded: LoadedSuite) -> bool:
    return any(v.template.knowledge for v in loaded.versions)


def embedder_for(loaded: LoadedSuite, settings: Settings, cache: Path | None) -> Embedder | None:
    """FMBOT_EMBED_MODEL's embedder (behind the cache) when an assertion embeds or a template
    retrieves passages; creating it makes no request and loads no model. ``settings``: those the
    suite was loaded (and its knowledge bases checked) with."""
    from bot.eval.similarity import CachedEmbedder
    from bot.kb.embedders import create_embedder

    if not uses(loaded.suite, loaded.cases, "similar") and not grounded(loaded):
        return None
    embedder = create_embedder(settings)
    return CachedEmbedder(embedder, cache / EMBEDDINGS_DIR) if cache is not None else embedder


def retriever_for(
    loaded: LoadedSuite, settings: Settings, embedder: Embedder | None
) -> Retriever | None:
    """Passages for knowledge templates, found as the bot finds them (``settings``'
    FMBOT_KB_DIR, where load_suite found the knowledge bases)."""
    if embedder is None or not grounded(loaded):
        return None
    return Retriever(settings.knowledge_dir, embedder)


def similar_for(loaded: LoadedSuite, embedder: Embedder | None) -> Similar | None:
    from bot.eval.similarity import SimilarJudge

    if embedder is None or not uses(loaded.suite, loaded.cases, "similar"):
        return None
    return SimilarJudge(embedder)


async def judge_for(loaded: LoadedSuite, wrap: Wrap | None) -> Judge | None:
    """The suite's judge (its model behind the cache too), when an assertion needs one."""
    from bot.eval.judge import RubricJudge

    if loaded.judge is None or loaded.judge_template is None:
        return None
    settings = batch_settings(loaded.judge, False)
    model = await get_text_model(settings)
    template = loaded.judge_template.template
    return RubricJudge(template, wrap(model, 0) if wrap else model, options_for(settings, template))

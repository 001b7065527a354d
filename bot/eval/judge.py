"""``llm-rubric``: a judge model grades a reply against a rubric with the shipped, editable
``llm-rubric`` template and answers ``{"pass": bool, "score": 0..1, "reason": str}`` (the
convention promptfoo's graders use). Anything else is an error of the assertion, never a pass.
"""

from __future__ import annotations

import json
import re

from bot.errors import FmbotError
from bot.eval.assertions import Assertion, Outcome
from bot.models.base import GenerationOptions, TextModel
from bot.prompts.render import build_messages
from bot.prompts.template import PromptTemplate
from bot.prompts.variables import coerce_variables
from bot.text import terminal_safe

_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.IGNORECASE)
EXPECTED = 'a JSON object {"pass": true|false, "score": 0..1, "reason": "..."}'


def _unparsable(text: str, why: str) -> Outcome:
    shown = terminal_safe(text.strip())[:200]
    return Outcome(
        False, 0.0, f"the judge's verdict is not {EXPECTED} ({why}): {shown!r}", error=True
    )


def parse_verdict(text: str, threshold: float | None) -> Outcome:
    """The judge's answer as an outcome; ``threshold``: the score needed besides ``pass``."""
    body = _FENCE.sub("", text.strip())
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end < start:
        return _unparsable(text, "no JSON object")
    try:
        data = json.loads(body[start : end + 1])
    except ValueError:
        return _unparsable(text, "invalid JSON")
    if not isinstance(data, dict) or not isinstance(data.get("pass"), bool):
        return _unparsable(text, '"pass" is not true or false')
    passed: bool = data["pass"]
    score = data.get("score", 1.0 if passed else 0.0)
    if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
        return _unparsable(text, '"score" is not a number from 0 to 1')
    reason = data.get("reason", "")
    reason = reason if isinstance(reason, str) else json.dumps(reason, ensure_ascii=False)
    if threshold is not None and score < threshold:
        passed = False
        reason = f"score {score:g} < threshold {threshold:g}: {reason}"
    return Outcome(passed, float(score), reason or ("passed" if passed else "failed"))


class RubricJudge:
    """Grades llm-rubric assertions with ``model`` (behind the cache, like the cells)."""

    def __init__(
        self, template: PromptTemplate, model: TextModel, options: GenerationOptions
    ) -> None:
        self.template = template
        self.model = model
        self.options = options

    async def __call__(self, assertion: Assertion, reply: str, question: str) -> Outcome:
        values = {"rubric": str(assertion.value), "question": question}
        try:
            variables = coerce_variables(self.template, values, known_only=False)
            messages = build_messages(self.template, reply or "(an empty reply)", (), variables)
            verdict = await self.model.respond(messages, self.options)
        except FmbotError as exc:
            return Outcome(False, 0.0, f"the judge failed: {exc}", error=True)
        return parse_verdict(verdict, assertion.threshold)

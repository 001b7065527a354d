"""Assertions: what a reply must satisfy. Each gives an :class:`Outcome` (pass, score, reason).

Deterministic types are checked here (``cites`` too: the cell's retrieved passages come with
its reply); ``llm-rubric`` asks a judge model (see :mod:`.judge`),
``similar`` the configured embedder (see :mod:`.similarity`). Every check is total: a reply that
cannot be checked (not JSON, no token count) fails with a reason, never raises.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from bot.kb.retrieval import cited_numbers

AssertionType = Literal[
    "equals",
    "contains",
    "icontains",
    "not-contains",
    "regex",
    "starts-with",
    "max-length",
    "max-tokens",
    "is-json",
    "latency-ms",
    "llm-rubric",
    "similar",
    "cites",
]
_TEXT_TYPES = {"equals", "contains", "icontains", "not-contains", "regex", "starts-with"}
_LIMIT_TYPES = {"max-length", "max-tokens", "latency-ms"}
#: Graded by a model (the judge, the embedder) rather than by :func:`check`.
MODEL_GRADED = {"llm-rubric", "similar"}
#: ``similar``: the cosine similarity needed when the assertion gives no ``threshold``.
SIMILAR_THRESHOLD = 0.8


class Assertion(BaseModel):
    """One check of a reply. ``weight`` counts it in the cell's score (0: reported only);
    ``metric`` is a name its pass rate is reported under."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: AssertionType
    # Checked when left out too: `{type: contains}` is a mistake, `{type: is-json}` is not.
    value: Any = Field(default=None, validate_default=True)
    weight: float = Field(default=1.0, ge=0)
    metric: str | None = None
    #: llm-rubric: the judge's score needed to pass (default: the judge's own verdict);
    #: similar: the cosine similarity needed (default 0.8).
    threshold: float | None = Field(default=None, ge=0, le=1)

    @field_validator("value")
    @classmethod
    def _value_fits_type(cls, value: Any, info: ValidationInfo) -> Any:
        kind = info.data.get("type")
        if kind is None:
            return value  # the type itself is invalid and reported
        if kind in _TEXT_TYPES or kind in MODEL_GRADED:
            if not isinstance(value, str) or (kind != "equals" and not value):
                raise ValueError(f"{kind} needs a text value")
            if kind == "regex":
                try:
                    re.compile(value)
                except re.error as exc:
                    raise ValueError(f"not a valid regular expression ({exc})") from None
        elif kind in _LIMIT_TYPES or (kind == "cites" and value is not None):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                if kind == "cites":
                    raise ValueError("cites takes the citations needed: a whole number ≥ 0")
                raise ValueError(f"{kind} needs a whole number ≥ 0")
        elif kind == "is-json" and value is not None:
            if not isinstance(value, dict):
                raise ValueError("is-json takes a JSON Schema (a mapping) as value, or none")
            try:
                jsonschema.validators.validator_for(value).check_schema(value)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"not a valid JSON Schema ({exc.message})") from None
        return value

    @model_validator(mode="after")
    def _threshold_fits_type(self) -> Assertion:
        if self.threshold is not None and self.type not in MODEL_GRADED:
            raise ValueError(f"threshold applies to llm-rubric and similar, not to {self.type}")
        return self

    @property
    def label(self) -> str:
        """How a report names it: ``contains 'x'``."""
        if self.value is None:
            return self.type
        shown = json.dumps(self.value, ensure_ascii=False)
        return f"{self.type} {shown if len(shown) <= 60 else shown[:59] + '…'}"


@dataclass(frozen=True, slots=True)
class Outcome:
    passed: bool
    score: float
    reason: str
    #: The assertion could not be decided (the judge's verdict was unparsable): not a pass.
    error: bool = False


@dataclass(frozen=True, slots=True)
class Reply:
    """What one cell produced, as the assertions see it."""

    text: str
    output_tokens: int | None
    latency_ms: int | None
    #: The numbers of the passages retrieved for the cell (a template with ``knowledge:``);
    #: None: its template retrieves none.
    passages: tuple[int, ...] | None = None


def _result(passed: bool, reason: str) -> Outcome:
    return Outcome(passed, 1.0 if passed else 0.0, reason)


def _limit(what: str, measured: int | None, limit: int) -> Outcome:
    if measured is None:
        return Outcome(False, 0.0, f"the model reported no {what}", error=True)
    verdict = "≤" if measured <= limit else ">"
    return _result(measured <= limit, f"{what} {measured} {verdict} {limit}")


def _is_json(text: str, schema: dict[str, Any] | None) -> Outcome:
    try:
        data = json.loads(text)
    except ValueError as exc:
        return _result(False, f"not JSON ({exc})")
    if schema is None:
        return _result(True, "valid JSON")
    errors = sorted(
        jsonschema.validators.validator_for(schema)(schema).iter_errors(data),
        key=lambda e: list(e.absolute_path),
    )
    if not errors:
        return _result(True, "valid JSON matching the schema")
    first = errors[0]
    where = "/".join(str(p) for p in first.absolute_path) or "(root)"
    return _result(False, f"does not match the schema at {where}: {first.message}")


def _cites(reply: Reply, needed: int) -> Outcome:
    """Every ``[n]`` names a passage retrieved for the cell, and at least ``needed`` distinct
    ones are cited. Score: the share of the cited numbers that are valid."""
    if reply.passages is None:
        return Outcome(False, 0.0, "its template retrieves no passages (no knowledge:)", error=True)
    cited = sorted(cited_numbers(reply.text))
    valid = sorted(set(reply.passages))
    bad = [n for n in cited if n not in valid]
    given = f"retrieved: {_numbers(valid)}" if valid else "no passage was retrieved"
    if bad:
        score = (len(cited) - len(bad)) / len(cited)
        return Outcome(False, score, f"cites {_numbers(bad)}, not retrieved ({given})")
    if len(cited) < needed:
        found = _numbers(cited) if cited else "nothing"
        return Outcome(False, 0.0, f"cites {found}, needs at least {needed} ({given})")
    if not cited:
        return _result(True, "no citation (none needed)")
    return _result(True, f"cites {_numbers(cited)}")


def _numbers(numbers: list[int]) -> str:
    return ", ".join(f"[{n}]" for n in numbers)


def check(assertion: Assertion, reply: Reply) -> Outcome:
    """Grade ``reply`` with a deterministic assertion (llm-rubric: see :mod:`.judge`, similar:
    :mod:`.similarity`)."""
    kind, value, text = assertion.type, assertion.value, reply.text
    if kind == "equals":
        return _result(text == value, "equal" if text == value else "differs from the value")
    if kind == "contains":
        found = value in text
        return _result(found, "found" if found else f"{value!r} not found")
    if kind == "icontains":
        found = value.casefold() in text.casefold()
        return _result(found, "found" if found else f"{value!r} not found (any case)")
    if kind == "not-contains":
        found = value in text
        return _result(not found, f"{value!r} found" if found else "not found")
    if kind == "regex":
        match = re.search(value, text)
        return _result(match is not None, "matches" if match else f"no match for /{value}/")
    if kind == "starts-with":
        ok = text.startswith(value)
        return _result(ok, "starts so" if ok else f"does not start with {value!r}")
    if kind == "max-length":
        return _limit("length", len(text), value)
    if kind == "max-tokens":
        return _limit("output tokens", reply.output_tokens, value)
    if kind == "latency-ms":
        return _limit("latency ms", reply.latency_ms, value)
    if kind == "is-json":
        return _is_json(text, value)
    if kind == "cites":
        return _cites(reply, 1 if value is None else value)
    raise ValueError(f"{kind} is graded by a model, not by check()")


def cell_score(graded: list[tuple[Assertion, Outcome]]) -> tuple[bool, float]:
    """A cell passes when every weighted assertion passed; its score is the weighted mean."""
    weighted = [(a.weight, o) for a, o in graded if a.weight > 0]
    passed = all(o.passed for _, o in weighted)
    total = sum(w for w, _ in weighted)
    if not total:
        return passed, 1.0 if passed else 0.0
    return passed, sum(w * o.score for w, o in weighted) / total

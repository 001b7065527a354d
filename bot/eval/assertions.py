"""Assertions: what a reply must satisfy. Each gives an :class:`Outcome` (pass, score, reason).

Deterministic types are checked here; ``llm-rubric`` asks a judge model (see :mod:`.judge`).
Every check is total: a reply that cannot be checked (not JSON, no token count) fails with a
reason, never raises.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

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
]
_TEXT_TYPES = {"equals", "contains", "icontains", "not-contains", "regex", "starts-with"}
_LIMIT_TYPES = {"max-length", "max-tokens", "latency-ms"}


class Assertion(BaseModel):
    """One check of a reply. ``weight`` counts it in the cell's score (0: reported only);
    ``metric`` is a name its pass rate is reported under."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: AssertionType
    value: Any = None
    weight: float = Field(default=1.0, ge=0)
    metric: str | None = None
    #: llm-rubric: the judge's score needed to pass (default: the judge's own verdict).
    threshold: float | None = Field(default=None, ge=0, le=1)

    @field_validator("value")
    @classmethod
    def _value_fits_type(cls, value: Any, info: ValidationInfo) -> Any:
        kind = info.data.get("type")
        if kind is None:
            return value  # the type itself is invalid and reported
        if kind in _TEXT_TYPES or kind == "llm-rubric":
            if not isinstance(value, str) or (kind != "equals" and not value):
                raise ValueError(f"{kind} needs a text value")
            if kind == "regex":
                try:
                    re.compile(value)
                except re.error as exc:
                    raise ValueError(f"not a valid regular expression ({exc})") from None
        elif kind in _LIMIT_TYPES:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{kind} needs a whole number ≥ 0")
        elif kind == "is-json" and value is not None:
            if not isinstance(value, dict):
                raise ValueError("is-json takes a JSON Schema (a mapping) as value, or none")
            try:
                jsonschema.validators.validator_for(value).check_schema(value)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"not a valid JSON Schema ({exc.message})") from None
        return value

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


def check(assertion: Assertion, reply: Reply) -> Outcome:
    """Grade ``reply`` with a deterministic assertion (llm-rubric: see :mod:`.judge`)."""
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
    raise ValueError(f"{kind} is graded by a judge, not by check()")


def cell_score(graded: list[tuple[Assertion, Outcome]]) -> tuple[bool, float]:
    """A cell passes when every weighted assertion passed; its score is the weighted mean."""
    weighted = [(a.weight, o) for a, o in graded if a.weight > 0]
    passed = all(o.passed for _, o in weighted)
    total = sum(w for w, _ in weighted)
    if not total:
        return passed, 1.0 if passed else 0.0
    return passed, sum(w * o.score for w, o in weighted) / total

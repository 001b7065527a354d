"""Assertions: what a reply must satisfy. Each gives an :class:`Outcome` (pass, score, reason).

Deterministic types are checked here; ``llm-rubric`` asks a judge model (see :mod:`.judge`).
Every check is total: a reply that cannot be checked (not JSON, no token count) fails with a
reason, never raises.
"""

from __future__ import annotations

import json
import re
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

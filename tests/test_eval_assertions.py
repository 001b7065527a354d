"""Deterministic assertions: each type passing and failing, with a reason; weights and scores."""

from __future__ import annotations

from typing import Any

import pytest

from bot.eval.assertions import MODEL_GRADED, Assertion, Outcome, Reply, cell_score, check

REPLY = Reply('echo: {"name": "Mug", "ml": 350}', output_tokens=5, latency_ms=40)
JSON_REPLY = Reply('{"name": "Mug", "ml": 350}', output_tokens=3, latency_ms=40)
SCHEMA = {"type": "object", "required": ["name", "ml"], "properties": {"ml": {"type": "integer"}}}

CASES: list[tuple[str, Any, Reply, bool, str]] = [
    ("equals", REPLY.text, REPLY, True, "equal"),
    ("equals", "echo:", REPLY, False, "differs"),
    ("contains", "Mug", REPLY, True, "found"),
    ("contains", "mug", REPLY, False, "'mug' not found"),
    ("icontains", "MUG", REPLY, True, "found"),
    ("icontains", "cup", REPLY, False, "'cup' not found"),
    ("not-contains", "As an AI", REPLY, True, "not found"),
    ("not-contains", "Mug", REPLY, False, "'Mug' found"),
    ("regex", r"\d{3}", REPLY, True, "matches"),
    ("regex", r"^\d", REPLY, False, "no match"),
    ("starts-with", "echo:", REPLY, True, "starts"),
    ("starts-with", "Mug", REPLY, False, "does not start with 'Mug'"),
    ("max-length", 100, REPLY, True, f"length {len(REPLY.text)} ≤ 100"),
    ("max-length", 10, REPLY, False, f"length {len(REPLY.text)} > 10"),
    ("max-tokens", 5, REPLY, True, "output tokens 5 ≤ 5"),
    ("max-tokens", 4, REPLY, False, "output tokens 5 > 4"),
    ("max-tokens", 4, Reply("x", None, 1), False, "the model reported no output tokens"),
    ("latency-ms", 40, REPLY, True, "latency ms 40 ≤ 40"),
    ("latency-ms", 39, REPLY, False, "latency ms 40 > 39"),
    ("is-json", None, JSON_REPLY, True, "valid JSON"),
    ("is-json", None, REPLY, False, "not JSON"),
    ("is-json", SCHEMA, JSON_REPLY, True, "valid JSON matching the schema"),
    ("is-json", {**SCHEMA, "required": ["price"]}, JSON_REPLY, False, "does not match"),
    ("is-json", {"properties": {"ml": {"type": "string"}}}, JSON_REPLY, False, "at ml:"),
    ("cites", None, Reply("See [2].", 3, 1, (1, 2)), True, "cites [2]"),
    ("cites", None, Reply("See the manual.", 3, 1, (1, 2)), False, "cites nothing, needs"),
]


@pytest.mark.parametrize(("kind", "value", "reply", "passes", "reason"), CASES)
def test_each_type_passes_and_fails_with_a_reason(
    kind: str, value: Any, reply: Reply, passes: bool, reason: str
) -> None:
    outcome = check(Assertion(type=kind, value=value), reply)  # type: ignore[arg-type]
    assert outcome.passed is passes
    assert outcome.score == (1.0 if passes else 0.0)
    assert reason in outcome.reason


def test_every_deterministic_type_is_covered_both_ways() -> None:
    kinds = {kind for kind, *_ in CASES}
    every = set(Assertion.model_fields["type"].annotation.__args__)  # type: ignore[union-attr]
    deterministic = every - MODEL_GRADED
    assert kinds == deterministic
    for kind in kinds:
        assert {p for k, _, _, p, _ in CASES if k == kind} == {True, False}, kind


def test_the_cell_score_is_the_weighted_mean_and_weight_zero_only_reports() -> None:
    a = Assertion(type="contains", value="x", weight=3)
    b = Assertion(type="contains", value="y")
    c = Assertion(type="contains", value="z", weight=0)
    ok, bad = Outcome(True, 1.0, ""), Outcome(False, 0.0, "")
    assert cell_score([(a, ok), (b, bad), (c, bad)]) == (False, 0.75)
    assert cell_score([(a, ok), (b, ok), (c, bad)]) == (True, 1.0)
    assert cell_score([(c, bad)]) == (True, 1.0)
    assert cell_score([]) == (True, 1.0)

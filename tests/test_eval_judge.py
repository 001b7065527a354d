"""llm-rubric: a judge model on the fake OpenAI server answering pass, fail and garbage."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bot.eval.judge import parse_verdict
from tests.eval_helpers import env, fake, fmbot, openai_env
from tests.fakes import FakeOpenAI

__all__ = ["env", "fake", "openai_env"]


def write_suite(tmp_path: Path) -> Path:
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "templates: [default]\nmodels: ['echo:']\njudge: openai:gpt-test\nthreshold: 1\n"
        "cases: [{message: Wool socks}]\n"
        "assert:\n"
        "  - {type: llm-rubric, value: Mentions the material, metric: facts}\n"
        "  - {type: contains, value: socks}\n"
    )
    return suite


def only_row(out: Path) -> dict[str, object]:
    [row] = pq.read_table(out / "results.parquet").to_pylist()
    return row


def rubric(row: dict[str, object]) -> dict[str, object]:
    assertions = row["assertions"]
    assert isinstance(assertions, list)
    return next(a for a in assertions if a["type"] == "llm-rubric")


async def test_the_judge_passes_a_reply(
    tmp_path: Path, fake: FakeOpenAI, openai_env: dict[str, str]
) -> None:
    fake.reply = '```json\n{"pass": true, "score": 0.9, "reason": "names wool"}\n```'
    suite = write_suite(tmp_path)
    result = await fmbot(["eval", "run", str(suite), "-o", str(tmp_path / "a")], openai_env)
    assert result.returncode == 0, result.stdout + result.stderr
    row = only_row(tmp_path / "a")
    assert row["pass"] is True and row["score"] == pytest.approx((0.9 + 1) / 2)
    assert rubric(row) | {"value": None} == rubric(row) | {
        "value": None,
        "pass": True,
        "score": 0.9,
        "reason": "names wool",
        "error": False,
        "metric": "facts",
    }
    # What the judge was sent: the shipped template, the rubric, the question and the reply.
    [request] = fake.requests_to("/chat/completions")
    sent = request.body["messages"]
    assert sent[0]["role"] == "system" and '"pass"' in sent[0]["content"]
    user = sent[-1]["content"]
    assert "Rubric: Mentions the material" in user and "User message: Wool socks" in user
    assert "echo: Wool socks" in user
    assert request.body["temperature"] == 0

    # Judge calls are cached like the cells' replies.
    again = await fmbot(["eval", "run", str(suite), "-o", str(tmp_path / "b")], openai_env)
    assert again.returncode == 0 and len(fake.requests_to("/chat/completions")) == 1


async def test_the_judge_fails_a_reply(
    tmp_path: Path, fake: FakeOpenAI, openai_env: dict[str, str]
) -> None:
    fake.reply = json.dumps({"pass": False, "score": 0.2, "reason": "no material named"})
    result = await fmbot(
        ["eval", "run", str(write_suite(tmp_path)), "-o", str(tmp_path / "a")], openai_env
    )
    assert result.returncode == 1
    row = only_row(tmp_path / "a")
    assert row["pass"] is False and rubric(row)["reason"] == "no material named"
    assert rubric(row)["error"] is False
    assert "no material named" in result.stdout


async def test_an_unparsable_verdict_is_an_error_never_a_pass(
    tmp_path: Path, fake: FakeOpenAI, openai_env: dict[str, str]
) -> None:
    fake.reply = "Sure! The reply looks great to me."
    result = await fmbot(
        ["eval", "run", str(write_suite(tmp_path)), "-o", str(tmp_path / "a")], openai_env
    )
    assert result.returncode == 1
    row = only_row(tmp_path / "a")
    graded = rubric(row)
    assert row["pass"] is False and graded["pass"] is False and graded["error"] is True
    assert "not a JSON object" in str(graded["reason"])


@pytest.mark.parametrize(
    ("text", "threshold", "passed", "error"),
    [
        ('{"pass": true, "score": 1, "reason": "ok"}', None, True, False),
        ('Verdict: {"pass": true, "score": 0.6, "reason": "ok"} done', 0.7, False, False),
        ('{"pass": false}', None, False, False),
        ('{"pass": "yes", "score": 1}', None, False, True),
        ('{"pass": true, "score": 7}', None, False, True),
        ('{"pass": true, "score": true}', None, False, True),
        ("[true]", None, False, True),
        ("{not json}", None, False, True),
        ("", None, False, True),
    ],
)
def test_verdicts(text: str, threshold: float | None, passed: bool, error: bool) -> None:
    outcome = parse_verdict(text, threshold)
    assert (outcome.passed, outcome.error) == (passed, error)


async def test_a_missing_judge_prompt_is_a_suite_error(
    tmp_path: Path, openai_env: dict[str, str]
) -> None:
    own = tmp_path / "prompts"
    own.mkdir()
    (own / "default.yaml").write_text("name: default\ninstruction: Be brief.\n")
    result = await fmbot(
        ["eval", "check", str(write_suite(tmp_path))], openai_env | {"FMBOT_PROMPTS_DIR": str(own)}
    )
    assert result.returncode == 2
    assert "copy the shipped prompts/llm-rubric.yaml there" in result.stderr

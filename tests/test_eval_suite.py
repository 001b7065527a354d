"""The eval suite file: every problem at path:line:column, exit 2, no traceback; `eval init`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.eval.suite import load_suite
from bot.settings import load_settings
from tests.eval_helpers import env, fmbot

__all__ = ["env"]


def _settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    return load_settings(FMBOT_HOME=str(tmp_path / "home"), FMBOT_TEXT_MODEL="echo:")


def test_a_valid_inline_suite_resolves_templates_models_and_cases(tmp_path: Path) -> None:
    draft = tmp_path / "drafts" / "product-description.md"
    draft.parent.mkdir()
    draft.write_text(
        "---\nname: product-description\n---\nBe brief; about {{ words | default(80) }} words.\n"
    )
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "templates: [product-description, drafts/product-description.md]\n"
        "cases:\n"
        "  - {message: mug, vars: {words: 40}, assert: [{type: contains, value: mug}]}\n"
        "assert: [{type: max-length, value: 600, metric: size}]\n"
    )
    loaded = load_suite(suite, _settings(tmp_path))
    assert loaded.problems == []
    assert [v.ref for v in loaded.versions] == [
        "product-description",
        "drafts/product-description.md",
    ]
    assert loaded.versions[1].source == draft.read_text()
    assert loaded.models == ["echo:"]  # FMBOT_TEXT_MODEL
    assert loaded.cases[0].values == {"message": "mug", "words": 40}
    assert [a.type for a in loaded.cases[0].assertions] == ["contains"]
    assert loaded.suite.assertions[0].metric == "size"
    assert loaded.suite.threshold == 1.0


def test_a_table_of_cases_is_read_relative_to_the_suite(tmp_path: Path) -> None:
    (tmp_path / "cases.csv").write_text("message,words\nmug,40\nsocks,\n")
    suite = tmp_path / "suite.yaml"
    suite.write_text("templates: [default]\nmodels: [echo:]\ncases: cases.csv\n")
    loaded = load_suite(suite, _settings(tmp_path))
    assert loaded.problems == []
    assert loaded.models == ["echo:"]  # unquoted `echo:` is YAML's {echo: null}: the spec meant
    assert [c.values for c in loaded.cases] == [
        {"message": "mug", "words": "40"},
        {"message": "socks", "words": None},
    ]


async def test_every_problem_is_reported_with_its_location(
    tmp_path: Path, env: dict[str, str]
) -> None:
    suite = tmp_path / "bad.yaml"
    suite.write_text(
        "templates: [default, nope]\n"
        "cases:\n"
        "  - message: hi\n"
        "    assert:\n"
        "      - {type: containz, value: x}\n"
        "      - {type: regex, value: '('}\n"
        "  - mesage: typo\n"
        "assert: [{type: max-length, value: -1}, {type: is-json, value: {type: 12}}]\n"
        "threshold: 2\n"
        "colour: red\n"
    )
    result = await fmbot(["eval", "check", str(suite)], env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    expected = [
        # Field errors do not hide the rest: the unknown template is reported too.
        f"{suite}:1:22: templates: no valid template named 'nope'",
        f"{suite}:5:16: cases.0.assert.0.type: Input should be 'equals'",
        f"{suite}:6:30: cases.0.assert.1.value: not a valid regular expression",
        f"{suite}:7:5: cases.1.message: Field required",
        f"{suite}:7:5: cases.1.mesage: unknown field",
        f"{suite}:8:36: assert.0.value: max-length needs a whole number ≥ 0",
        f"{suite}:8:64: assert.1.value: not a valid JSON Schema",
        f"{suite}:9:12: threshold: Input should be less than or equal to 1",
        f"{suite}:10:1: colour: unknown field",
    ]
    assert len(lines) == len(expected) + 1, result.stderr
    for line, start in zip(lines, expected, strict=False):
        assert line.startswith(start), (line, start)
    assert lines[-1].startswith("9 problem(s) in the suite")


async def test_unknown_templates_models_and_missing_files(
    tmp_path: Path, env: dict[str, str]
) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "templates: [default, nope, drafts/missing.md]\n"
        "models: [echo:, 'bogus:x']\n"
        "cases: missing.csv\n"
    )
    result = await fmbot(["eval", "check", str(suite)], env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"{suite}:1:22: templates: no valid template named 'nope'")
    assert lines[1].startswith(f"{suite}:1:28: templates: no such template file")
    assert lines[2].startswith(f"{suite}:2:17: models: use local:smollm2")
    assert lines[3].startswith(f"{suite}:3:8: cases: no such file")
    assert lines[4].startswith("4 problem(s)")


async def test_bad_yaml_and_a_broken_template_file(tmp_path: Path, env: dict[str, str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("templates: [a\ncases: x\n")
    result = await fmbot(["eval", "check", str(bad)], env)
    assert result.returncode == 2
    assert result.stderr.startswith(f"{bad}:2:6: YAML syntax error")

    draft = tmp_path / "draft.yaml"
    draft.write_text("name: draft\ninstruction: 'Hi {{ nobody }}'\n")
    suite = tmp_path / "suite.yaml"
    suite.write_text("templates: [draft.yaml]\ncases: [{message: hi}]\n")
    result = await fmbot(["eval", "check", str(suite)], env)
    assert result.returncode == 2
    # The template's own problem, at its own file's location.
    assert result.stderr.startswith(f"{draft}:2:"), result.stderr
    assert "nobody" in result.stderr.splitlines()[0]


async def test_init_writes_a_commented_example_that_checks(
    tmp_path: Path, env: dict[str, str]
) -> None:
    result = await fmbot(["eval", "init"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "suite.yaml").read_text()
    assert text.startswith("# ") and "threshold:" in text
    checked = await fmbot(["eval", "check", "suite.yaml"], env, cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("OK: 2 case(s) × 1 template version(s) × 1 model(s)")
    again = await fmbot(["eval", "init"], env, cwd=tmp_path)
    assert again.returncode == 2 and "exists" in again.stderr
    assert (tmp_path / "suite.yaml").read_text() == text


@pytest.mark.parametrize("judge", [None, "echo:"])
def test_llm_rubric_needs_a_judge(tmp_path: Path, judge: str | None) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "templates: [default]\ncases: [{message: hi}]\n"
        "assert: [{type: llm-rubric, value: polite}]\n" + (f"judge: '{judge}'\n" if judge else "")
    )
    problems = [p.detail for p in load_suite(suite, _settings(tmp_path)).problems]
    needs = [p for p in problems if p.startswith("judge: llm-rubric assertions need a judge")]
    assert bool(needs) == (judge is None)


def test_a_table_row_may_carry_its_own_assertions(tmp_path: Path) -> None:
    # JSON text in the 'assert' cell: Parquet columns keep one type, assertion values do not.
    rows = [
        {"message": "mug", "assert": json.dumps([{"type": "contains", "value": "mug"}])},
        {"message": "socks", "assert": json.dumps([{"type": "max-length", "value": 9}])},
        {"message": "hat"},
    ]
    (tmp_path / "cases.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    suite = tmp_path / "suite.yaml"
    suite.write_text("templates: [default]\ncases: cases.jsonl\n")
    loaded = load_suite(suite, _settings(tmp_path))
    assert loaded.problems == []
    assert [[(a.type, a.value) for a in c.assertions] for c in loaded.cases] == [
        [("contains", "mug")],
        [("max-length", 9)],
        [],
    ]
    assert [c.values for c in loaded.cases] == [
        {"message": "mug"},
        {"message": "socks"},
        {"message": "hat"},
    ]

    # In a CSV table the cell holds the JSON as text: one assertion or a list.
    (tmp_path / "cases.csv").write_text(
        'message,assert\nmug,"{""type"": ""icontains"", ""value"": ""MUG""}"\n'
        'cup,"[{""type"": ""containz""}]"\nsocks,not json\nhat,\n'
    )
    suite.write_text("templates: [default]\ncases: cases.csv\n")
    loaded = load_suite(suite, _settings(tmp_path))
    assert [(a.type, a.value) for a in loaded.cases[0].assertions] == [("icontains", "MUG")]
    problems = [str(p) for p in loaded.problems]
    assert len(problems) == 2
    assert problems[0].startswith(f"{suite}:2:8: cases: row 1 of cases.csv: its 'assert' cell")
    assert "containz" in problems[0]
    assert problems[1].startswith(f"{suite}:2:8: cases: row 2 of cases.csv")

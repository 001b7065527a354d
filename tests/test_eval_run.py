"""``fmbot eval run`` end to end on the echo model: assertions passing and failing, the matrix,
exit codes, JUnit, the Parquet columns and the suite as run."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from tests.eval_helpers import env, fmbot

__all__ = ["env"]

FAILING_CASE = """\
  - message: Socks
    assert:
      - {type: contains, value: wool}
      - {type: icontains, value: WOOL}
      - {type: not-contains, value: Socks}
      - {type: regex, value: '^\\d'}
      - {type: starts-with, value: Socks}
      - {type: max-length, value: 3}
      - {type: max-tokens, value: 1}
      - {type: latency-ms, value: 10}
      - {type: is-json}
      - {type: equals, value: Socks}
"""


def write_suite(tmp_path: Path, threshold: float) -> Path:
    (tmp_path / "plain.yaml").write_text("name: plain\ninstruction: Be brief.\n")
    (tmp_path / "drafts").mkdir(exist_ok=True)
    (tmp_path / "drafts" / "plain.yaml").write_text(
        "name: plain\ninstruction: Be brief.\ntask: 'Q: {{ message }}'\n"
    )
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "description: echo suite\n"
        "templates: [plain.yaml, drafts/plain.yaml]\n"
        "models: ['echo:?delay=0.05']\n"
        f"threshold: {threshold}\n"
        "assert:\n"
        "  - {type: max-length, value: 600, metric: size}\n"
        "cases:\n"
        "  - message: Mug 350 ml\n"
        "    assert:\n"
        "      - {type: equals, value: 'echo: Mug 350 ml', metric: exact}\n"
        "      - {type: contains, value: Mug}\n"
        "      - {type: icontains, value: mug}\n"
        "      - {type: not-contains, value: As an AI}\n"
        "      - {type: regex, value: '\\d{3}'}\n"
        "      - {type: starts-with, value: 'echo:'}\n"
        "      - {type: max-length, value: 100}\n"
        "      - {type: max-tokens, value: 10}\n"
        "      - {type: latency-ms, value: 60000}\n"
        "      - {type: is-json, weight: 0}\n" + FAILING_CASE
    )
    return suite


async def test_a_suite_end_to_end(tmp_path: Path, env: dict[str, str]) -> None:
    suite = write_suite(tmp_path, 0.5)
    out, junit = tmp_path / "out", tmp_path / "junit.xml"
    result = await fmbot(
        ["eval", "run", str(suite), "-o", str(out), "--junit", str(junit), "-c", "2"], env
    )
    # plain.yaml passes case 0 and fails case 1 (50%); the draft also fails `equals` (0%).
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "FAILED: 1 template × model pass rate(s) below the threshold 50%." in result.stdout
    assert "4/4" in result.stderr  # the progress bar: 2 cases × 2 versions

    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert {k for k in rows[0] if k != "assertions"} >= {
        "case", "message", "template", "model", "repeat", "reply", "status", "pass", "score",
        "input_tokens", "output_tokens", "latency_ms",
    }  # fmt: skip
    by = {(r["template"], r["case"]): r for r in rows}
    assert len(rows) == 4 and all(r["model"] == "echo:?delay=0.05" for r in rows)
    first = by[("plain.yaml", 0)]
    assert first["reply"] == "echo: Mug 350 ml" and first["status"] == "ok"
    assert first["pass"] is True and first["score"] == 1.0 and first["repeat"] == 0
    assert first["output_tokens"] == 4 and first["latency_ms"] >= 50
    outcomes = {a["type"]: a for a in first["assertions"]}
    assert outcomes["is-json"]["pass"] is False  # weight 0: reported, not counted
    assert all(a["pass"] for a in first["assertions"] if a["type"] != "is-json")
    assert [a["type"] for a in first["assertions"]][:2] == ["max-length", "equals"]

    failing = by[("plain.yaml", 1)]
    assert failing["pass"] is False and failing["score"] == 1 / 11  # only the suite's max-length
    failed = {a["type"]: a["reason"] for a in failing["assertions"] if not a["pass"]}
    assert set(failed) == {
        "contains", "icontains", "not-contains", "regex", "starts-with", "max-length",
        "max-tokens", "latency-ms", "is-json", "equals",
    }  # fmt: skip
    assert failed["contains"] == "'wool' not found"
    draft = by[("drafts/plain.yaml", 0)]
    assert draft["reply"] == "echo: Q: Mug 350 ml" and draft["pass"] is False

    # The matrix, per metric, and the failed cells with their reasons.
    assert "plain.yaml" in result.stdout and "50%" in result.stdout and "1/2" in result.stdout
    assert "pass rate per metric" in result.stdout and "exact" in result.stdout
    assert "case 1 (Socks) × plain.yaml" in result.stdout
    assert "contains \"wool\": 'wool' not found" in result.stdout

    # The suite as run records every template version's source.
    recorded = yaml.safe_load((out / "suite.yaml").read_text())
    assert (
        recorded["template_sources"]["drafts/plain.yaml"]
        == (tmp_path / "drafts" / "plain.yaml").read_text()
    )
    assert recorded["models"] == ["echo:?delay=0.05"]

    tree = ET.parse(junit).getroot()
    cases = tree.findall("./testsuite/testcase")
    assert len(cases) == 4
    failures = tree.findall("./testsuite/testcase/failure")
    assert len(failures) == 3
    assert any("'wool' not found" in (f.text or "") for f in failures)


async def test_exit_status_follows_the_threshold(tmp_path: Path, env: dict[str, str]) -> None:
    suite = write_suite(tmp_path, 0.0)
    result = await fmbot(["eval", "run", str(suite), "-o", str(tmp_path / "o")], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED" in result.stdout
    suite.write_text(suite.read_text().replace("threshold: 0.0", "threshold: 0.51"))
    result = await fmbot(["eval", "run", str(suite), "-o", str(tmp_path / "o")], env)
    assert result.returncode == 1
    assert "FAILED: 2 template × model pass rate(s)" in result.stdout


async def test_a_model_that_cannot_be_reached_is_a_failed_cell(
    tmp_path: Path, env: dict[str, str]
) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text("templates: [default]\nmodels: ['openai:gpt-test']\ncases: [{message: hi}]\n")
    unreachable = env | {"OPENAI_API_KEY": "sk-x", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    result = await fmbot(["eval", "run", str(suite), "-o", str(tmp_path / "o")], unreachable)
    assert result.returncode == 1, result.stderr
    row = pq.read_table(tmp_path / "o" / "results.parquet").to_pylist()[0]
    assert row["status"] == "error" and row["pass"] is False and row["error"]
    assert "sk-x" not in result.stdout + result.stderr

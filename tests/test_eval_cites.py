"""Knowledge-base templates in ``fmbot eval``: passages retrieved as the bot retrieves them (a
real knowledge base, real e5), recorded in results.parquet, and the ``cites`` assertion."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bot.eval.assertions import Assertion, Reply, check
from bot.eval.run import run_eval
from bot.eval.suite import load_suite
from bot.settings import load_settings
from tests.eval_helpers import env, fmbot, graded
from tests.kb_files import build_shop_kb

__all__ = ["env"]

NUMBERED = (
    "name: numbered\nknowledge: shop\nknowledge_top_k: 2\ninstruction: Cite passages as [n].\n"
    "task: |\n  {% for p in knowledge %}[{{ p.n }}] {{ p.text }}\n  {% endfor %}Q: {{ message }}\n"
)
UNNUMBERED = (
    "name: unnumbered\nknowledge: shop\nknowledge_top_k: 2\ninstruction: Answer.\n"
    "task: |\n  {% for p in knowledge %}{{ p.text }}\n  {% endfor %}Q: {{ message }}\n"
)


@pytest.fixture(scope="module")
async def kb_dir(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Path]:
    yield await build_shop_kb(tmp_path_factory.mktemp("kb"))


def write_suite(tmp_path: Path, cases: str, templates: str = "[numbered.yaml]") -> Path:
    (tmp_path / "numbered.yaml").write_text(NUMBERED)
    (tmp_path / "unnumbered.yaml").write_text(UNNUMBERED)
    (tmp_path / "plain.yaml").write_text("name: plain\ninstruction: Answer.\n")
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"templates: {templates}\nmodels: ['echo:']\nthreshold: 0\ncases:\n{cases}")
    return suite


def cites_of(row: dict[str, object]) -> dict[str, object]:
    return graded(row, "cites")


async def test_passages_are_retrieved_recorded_and_citations_checked(
    tmp_path: Path, env: dict[str, str], kb_dir: Path
) -> None:
    suite = write_suite(
        tmp_path,
        "  - message: How long is the warranty?\n"
        "    assert: [{type: cites}]\n"
        "  - message: Does [7] say how long delivery takes?\n"
        "    assert: [{type: cites}]\n"
        "  - message: How long is the warranty, [1] or [2]?\n"
        "    assert: [{type: cites, value: 0}]\n",
        templates="[numbered.yaml, unnumbered.yaml]",
    )
    out = tmp_path / "out"
    result = await fmbot(
        ["eval", "run", str(suite), "-o", str(out)], env | {"FMBOT_KB_DIR": str(kb_dir)}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = pq.read_table(out / "results.parquet").to_pylist()
    by = {(r["template"], r["case"]): r for r in rows}

    warranty = by[("numbered.yaml", 0)]
    passages = warranty["retrieved"]
    assert isinstance(passages, list) and [p["n"] for p in passages] == [1, 2]
    first = passages[0]
    assert first["kb"] == "shop" and first["source"] == "warranty.md"
    assert "two-year" in first["text"] and isinstance(first["chunk"], int)
    assert 0 < first["score"] <= 1
    # The model was sent the passages (the echo model repeats its prompt).
    assert "two-year" in str(warranty["reply"])
    assert warranty["pass"] is True and cites_of(warranty)["reason"] == "cites [1], [2]"

    wrong = by[("numbered.yaml", 1)]
    assert wrong["pass"] is False
    assert cites_of(wrong)["reason"] == "cites [7], not retrieved (retrieved: [1], [2])"
    assert cites_of(wrong)["score"] == pytest.approx(2 / 3)

    # A reply without citations fails unless the assertion needs none.
    bare = by[("unnumbered.yaml", 0)]
    assert bare["pass"] is False
    assert cites_of(bare)["reason"] == "cites nothing, needs at least 1 (retrieved: [1], [2])"
    optional = by[("unnumbered.yaml", 2)]
    assert optional["pass"] is True and cites_of(optional)["reason"] == "cites [1], [2]"
    assert "cites [7], not retrieved" in result.stdout


async def test_suite_errors_for_knowledge_templates(
    tmp_path: Path, env: dict[str, str], kb_dir: Path
) -> None:
    kb_env = env | {"FMBOT_KB_DIR": str(kb_dir)}
    bad = write_suite(tmp_path, "  - message: hi\n    assert: [{type: cites, value: -1}]\n")
    result = await fmbot(["eval", "check", str(bad)], kb_env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(
        f"{bad}:6:35: cases.0.assert.0.value: cites takes the citations needed: a whole number"
    )
    suite = write_suite(
        tmp_path,
        "  - message: hi\n    assert: [{type: cites}]\n",
        templates="[numbered.yaml, plain.yaml]",
    )
    result = await fmbot(["eval", "check", str(suite)], kb_env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(
        f"{suite}:6:14: cites: checks the passages a knowledge-base template retrieved, but "
        "plain.yaml has no `knowledge:`"
    )
    # No knowledge base built where FMBOT_KB_DIR points: said before anything runs.
    good = write_suite(tmp_path, "  - message: hi\n    assert: [{type: cites}]\n")
    empty = tmp_path / "no-kb"
    result = await fmbot(["eval", "check", str(good)], env | {"FMBOT_KB_DIR": str(empty)})
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"{good}:1:13: templates: numbered.yaml answers from knowledge base 'shop', which is "
        f"not built in {empty}; build it with: fmbot kb add shop PATH..."
    )


async def test_batch_run_of_a_knowledge_template_records_its_passages(
    tmp_path: Path, env: dict[str, str], kb_dir: Path
) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "numbered.yaml").write_text(NUMBERED)
    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"message": "How long is the warranty?"}\n')
    out = tmp_path / "out.parquet"
    result = await fmbot(
        ["batch", "run", "--template", "numbered", "--input", str(cases),
         "--output", str(out), "--model", "echo:"],
        env | {"FMBOT_KB_DIR": str(kb_dir), "FMBOT_PROMPTS_DIR": str(prompts)},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    [row] = pq.read_table(out).to_pylist()
    assert "two-year" in str(row["reply"]) and '"source": "warranty.md"' in str(row["retrieved"])


def test_cites_without_retrieval_is_an_error_of_the_assertion() -> None:
    outcome = check(Assertion(type="cites"), Reply("see [1]", 1, 1, None))
    assert not outcome.passed and outcome.error
    none_found = check(Assertion(type="cites"), Reply("see [1]", 1, 1, ()))
    assert none_found.reason == "cites [1], not retrieved (no passage was retrieved)"


async def test_a_suite_runs_with_the_knowledge_bases_of_the_settings_it_was_loaded_with(
    tmp_path: Path, kb_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As the web Evaluate view runs it: the server's settings, not the environment's, whose
    # FMBOT_KB_DIR here holds no knowledge base.
    monkeypatch.setenv("FMBOT_KB_DIR", str(tmp_path / "elsewhere"))
    settings = load_settings(
        FMBOT_HOME=str(tmp_path / "home"), FMBOT_TEXT_MODEL="echo:", FMBOT_KB_DIR=str(kb_dir)
    )
    suite = write_suite(tmp_path, "  - message: How long is the warranty?\n")
    loaded = load_suite(suite, settings)
    assert not loaded.problems  # validated against kb_dir
    result = await run_eval(loaded, tmp_path / "out", settings)
    [cell] = result.cells
    assert (cell.status, cell.error) == ("ok", None)
    assert cell.passages is not None and cell.passages[0]["source"] == "warranty.md"

"""``--repeat N`` (pass^N beside the pass rate) and ``--filter-failing DIR``."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from tests.eval_helpers import env, fake, fmbot, openai_env
from tests.fakes import FakeOpenAI, Fault

__all__ = ["env", "fake", "openai_env"]


def write_suite(tmp_path: Path) -> Path:
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "templates: [default]\nmodels: ['openai:gpt-test', 'echo:']\nthreshold: 0.8\n"
        "cases: [{message: one}, {message: two}]\n"
        "assert: [{type: icontains, value: 'echo:'}]\n"
    )
    return suite


def rows(out: Path) -> list[dict[str, object]]:
    return pq.read_table(out / "results.parquet").to_pylist()


async def test_repeat_reports_pass_every_time_and_filter_failing_reruns_only_those(
    tmp_path: Path, fake: FakeOpenAI, openai_env: dict[str, str]
) -> None:
    suite = write_suite(tmp_path)
    # One of the six requests to the remote model fails: a flaky cell.
    fake.inject(Fault("status", status=400, message="flaky"), times=1)
    a = tmp_path / "a"
    result = await fmbot(["eval", "run", str(suite), "-o", str(a), "--repeat", "3"], openai_env)
    assert result.returncode == 0, result.stdout + result.stderr  # 5/6 ≥ 80%
    assert len(fake.requests_to("/chat/completions")) == 6  # repeats are samples, not cache hits
    found = rows(a)
    assert len(found) == 12
    assert sorted({r["repeat"] for r in found}) == [0, 1, 2]  # type: ignore[type-var]
    failed = [r for r in found if not r["pass"]]
    assert len(failed) == 1 and failed[0]["model"] == "openai:gpt-test"
    assert "pass^3" in result.stdout
    openai_line = next(line for line in result.stdout.splitlines() if "openai:gpt-test" in line)
    assert "83%" in openai_line and "5/6" in openai_line and "50% (1/2)" in openai_line
    echo_line = next(line for line in result.stdout.splitlines() if "│ echo:" in line)
    assert "100% (2/2)" in echo_line

    b = tmp_path / "b"
    again = ["eval", "run", str(suite), "-o", str(b), "--repeat", "3", "--filter-failing", str(a)]
    result = await fmbot(again, openai_env)
    assert result.returncode == 0, result.stdout + result.stderr
    rerun = rows(b)
    # Only the failed case × template × model ran (all its repeats); the others were cached.
    assert {(r["case"], r["model"]) for r in rerun} == {(failed[0]["case"], "openai:gpt-test")}
    assert len(rerun) == 3 and all(r["pass"] for r in rerun)
    assert len(fake.requests_to("/chat/completions")) == 7  # the failed one only: errors uncached


async def test_filter_failing_needs_an_earlier_run(
    tmp_path: Path, openai_env: dict[str, str]
) -> None:
    suite = write_suite(tmp_path)
    result = await fmbot(
        ["eval", "run", str(suite), "--filter-failing", str(tmp_path / "nothing")], openai_env
    )
    assert result.returncode == 2 and "has no results.parquet" in result.stderr

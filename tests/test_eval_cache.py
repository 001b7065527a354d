"""The reply cache of ``fmbot eval run``, proven by counting the fake OpenAI server's requests."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from tests.eval_helpers import env, fake, fmbot, openai_env
from tests.fakes import FakeOpenAI, Fault

__all__ = ["env", "fake", "openai_env"]


def write_suite(tmp_path: Path, template_task: str = "{{ message }}") -> Path:
    (tmp_path / "t.yaml").write_text(f"name: t\ninstruction: Be brief.\ntask: '{template_task}'\n")
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "templates: [t.yaml]\nmodels: ['openai:gpt-test']\nthreshold: 0\n"
        "cases: [{message: one}, {message: two}, {message: three}]\n"
        "assert: [{type: contains, value: Echo}]\n"
    )
    return suite


def chat_requests(fake: FakeOpenAI) -> int:
    return len(fake.requests_to("/chat/completions"))


def replies(out: Path) -> list[object]:
    return [r["reply"] for r in pq.read_table(out / "results.parquet").to_pylist()]


async def test_an_unchanged_suite_sends_no_request_the_second_time(
    tmp_path: Path, fake: FakeOpenAI, openai_env: dict[str, str]
) -> None:
    suite = write_suite(tmp_path)
    first = await fmbot(["eval", "run", str(suite), "-o", str(tmp_path / "a")], openai_env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert chat_requests(fake) == 3

    # Another output directory (nothing to resume): every reply comes from the cache.
    second = await fmbot(["eval", "run", str(suite), "-o", str(tmp_path / "b")], openai_env)
    assert second.returncode == 0, second.stderr
    assert chat_requests(fake) == 3
    assert (
        replies(tmp_path / "b")
        == replies(tmp_path / "a")
        == [
            "Echo: one",
            "Echo: two",
            "Echo: three",
        ]
    )
    tokens = pq.read_table(tmp_path / "b" / "results.parquet").column("output_tokens")
    assert tokens.to_pylist() == [2, 2, 2]  # usage is kept with the reply

    bypass = ["eval", "run", str(suite), "-o", str(tmp_path / "c"), "--no-cache"]
    assert (await fmbot(bypass, openai_env)).returncode == 0
    assert chat_requests(fake) == 6
    # The same output directory again resumes (the batch runner's): nothing is sent either.
    resumed = await fmbot(bypass, openai_env)
    assert resumed.returncode == 0 and chat_requests(fake) == 6
    assert replies(tmp_path / "c") == replies(tmp_path / "a")


async def test_a_changed_template_or_option_misses_the_cache(
    tmp_path: Path, fake: FakeOpenAI, openai_env: dict[str, str]
) -> None:
    suite = write_suite(tmp_path)
    assert (
        await fmbot(["eval", "run", str(suite), "-o", str(tmp_path / "a")], openai_env)
    ).returncode == 0
    write_suite(tmp_path, "Q: {{ message }}")
    result = await fmbot(["eval", "run", str(suite), "-o", str(tmp_path / "b")], openai_env)
    assert result.returncode == 0, result.stderr
    assert chat_requests(fake) == 6
    assert replies(tmp_path / "b")[0] == "Echo: Q: one"
    capped = openai_env | {"FMBOT_MAX_TOKENS": "7"}
    assert (
        await fmbot(["eval", "run", str(suite), "-o", str(tmp_path / "c")], capped)
    ).returncode == 0
    assert chat_requests(fake) == 9


async def test_errors_are_never_cached(
    tmp_path: Path, fake: FakeOpenAI, openai_env: dict[str, str]
) -> None:
    suite = write_suite(tmp_path)
    fake.inject(Fault("status", status=400, message="bad request"), times=3)
    failed = await fmbot(["eval", "run", str(suite), "-o", str(tmp_path / "a")], openai_env)
    assert failed.returncode == 0  # threshold 0: the gate is not what this test is about
    rows = pq.read_table(tmp_path / "a" / "results.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["error"] * 3
    assert chat_requests(fake) == 3
    again = await fmbot(["eval", "run", str(suite), "-o", str(tmp_path / "b")], openai_env)
    assert again.returncode == 0
    assert chat_requests(fake) == 6
    assert replies(tmp_path / "b") == ["Echo: one", "Echo: two", "Echo: three"]

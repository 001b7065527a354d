"""``fmbot eval run --mode batch``: each template version × model a Yandex Batch Inference task,
against the fake gRPC and HTTP batch services on 127.0.0.1; the same results and exit codes.
And a knowledge template's passages in batch mode (``fmbot batch run``), across a re-attach."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bot.batch.yandex import BatchClient
from bot.errors import ModelError
from bot.eval.run import run_eval
from bot.eval.suite import load_suite
from bot.settings import load_settings
from tests.eval_helpers import fmbot
from tests.fakes.yandex_batch_server import FakeYandexBatch
from tests.kb_files import build_shop_kb
from tests.test_batch_cli import results, write_jsonl
from tests.test_batch_mode_cli import LITE, env, fake
from tests.test_eval_cites import NUMBERED

__all__ = ["env", "fake"]


def write_suite(tmp_path: Path, models: str = f"['{LITE}']", threshold: float = 0.6) -> Path:
    (tmp_path / "t.yaml").write_text("name: t\ninstruction: Be brief.\n")
    (tmp_path / "draft.yaml").write_text(
        "name: t\ninstruction: Be brief.\ntask: 'Q: {{ message }}'\n"
    )
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        f"templates: [t.yaml, draft.yaml]\nmodels: {models}\nthreshold: {threshold}\n"
        "assert: [{type: starts-with, value: 'echo: '}]\n"
        "cases:\n"
        "  - message: Mug 350 ml\n"
        "    assert: [{type: equals, value: 'echo: Mug 350 ml'}]\n"
        "  - message: Socks\n"
        "  - message: FAIL this one\n"
    )
    return suite


async def test_each_version_is_a_batch_task_with_the_same_results(
    tmp_path: Path, env: dict[str, str], fake: FakeYandexBatch
) -> None:
    suite = write_suite(tmp_path)
    out = tmp_path / "out"
    result = await fmbot(["eval", "run", str(suite), "-o", str(out), "--mode", "batch"], env)
    # t.yaml: 2 of 3 (the service fails one line); the draft also misses `equals`: 1 of 3.
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED: 1 template × model pass rate(s) below the threshold 60%." in result.stdout
    assert len(fake.tasks) == 2
    assert all(t.model_uri == "gpt://b1gfolder/yandexgpt-lite/latest" for t in fake.tasks.values())
    rows = pq.read_table(out / "results.parquet").to_pylist()
    by = {(r["template"], r["case"]): r for r in rows}
    assert by[("t.yaml", 0)]["reply"] == "echo: Mug 350 ml" and by[("t.yaml", 0)]["pass"]
    assert by[("draft.yaml", 0)]["reply"] == "echo: Q: Mug 350 ml"
    assert by[("draft.yaml", 0)]["pass"] is False
    failed = by[("t.yaml", 2)]
    assert failed["status"] == "error" and failed["pass"] is False
    assert failed["error"] == f"the batch task could not process this row: {fake.fail_reason}"
    assert by[("t.yaml", 1)]["latency_ms"] is None  # the service does not time rows
    assert by[("t.yaml", 1)]["output_tokens"] == fake.usage["Socks"][1]
    # Both datasets of each task were deleted once its results were written.
    assert not fake.datasets

    # Run again into the same directory: only the failed rows go to new tasks.
    again = await fmbot(["eval", "run", str(suite), "-o", str(out), "--mode", "batch"], env)
    assert again.returncode == 1
    assert len(fake.tasks) == 4
    assert [len(t.lines) for t in list(fake.tasks.values())[2:]] == [1, 1]


async def test_batch_mode_needs_yandex_models(tmp_path: Path, env: dict[str, str]) -> None:
    suite = write_suite(tmp_path, models=f"['{LITE}', 'echo:']")
    result = await fmbot(["eval", "run", str(suite), "--mode", "batch"], env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "fmbot: configuration error: --mode='batch' is not valid: batch mode needs yandex: "
        "models, and the suite runs echo:; run it without --mode, or put the yandex: models in "
        "a suite of their own"
    )
    other = await fmbot(["eval", "run", str(suite), "--mode", "async"], env)
    assert other.returncode == 2
    assert "use --mode batch, or leave --mode out" in other.stderr


@pytest.fixture(scope="module")
async def kb_dir(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Path]:
    yield await build_shop_kb(tmp_path_factory.mktemp("kb"))


async def test_a_knowledge_template_in_batch_mode_keeps_its_passages_across_a_reattach(
    tmp_path: Path, env: dict[str, str], fake: FakeYandexBatch, kb_dir: Path
) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "numbered.yaml").write_text(NUMBERED)
    cases = write_jsonl(tmp_path / "cases.jsonl", ["How long is the warranty?"])
    out = tmp_path / "out.parquet"
    env = env | {"FMBOT_KB_DIR": str(kb_dir), "FMBOT_PROMPTS_DIR": str(prompts)}
    args = ["batch", "run", "-t", "numbered", "-i", str(cases), "-o", str(out), "--mode", "batch"]
    submitted = await fmbot([*args, "--no-wait"], env)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    [task] = fake.tasks.values()
    # The request carries the passages, placed as the bot places them.
    assert "[1] Every product comes with a two-year warranty" in str(task.lines[0]["request"])

    collected = await fmbot(args, env)  # a new process re-attaches: passages from the notes
    assert collected.returncode == 0, collected.stdout + collected.stderr
    assert len(fake.tasks) == 1
    [row] = results(out)
    passages = json.loads(str(row["retrieved"]))
    assert [p["n"] for p in passages] == [1, 2] and passages[0]["source"] == "warranty.md"
    assert str(row["reply"]).startswith("echo: [1] Every product")


async def test_a_failing_job_cancels_the_others_and_raises_its_own_error(
    tmp_path: Path, env: dict[str, str], fake: FakeYandexBatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        if name.startswith(("FMBOT_", "YANDEX_")):
            monkeypatch.setenv(name, value)  # the jobs read their model's settings from it
    # lite/rc is refused as its task starts; the lite/latest tasks would run on and on.
    fake.total_batches = 10_000
    suite = write_suite(tmp_path, models=f"['{LITE}', 'yandex:yandexgpt-lite/rc']")
    settings = load_settings()
    loaded = load_suite(suite, settings)
    assert not loaded.problems
    client = BatchClient.from_settings(settings, poll_initial=0.02, poll_max=0.02)
    async with client:
        with pytest.raises(ModelError, match="not supported in batch mode"):  # not a group
            async with asyncio.timeout(60):
                await run_eval(loaded, tmp_path / "out", settings, batch=client)
        heard = len(fake.calls)
        await asyncio.sleep(0.5)
        # The other jobs were stopped before run_eval returned (and closed its retriever, and
        # the caller its client): nothing polls on.
        assert fake.calls[heard:] == []

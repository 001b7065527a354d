"""``fmbot batch run --mode batch`` as a user runs it: real processes talking gRPC and HTTP to
the fake Yandex batch services on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.batch.checkpoint import progress_path, read_task_notes
from tests.fakes.yandex_batch_server import FakeYandexBatch
from tests.test_batch_cli import FMBOT, fmbot, results, write_jsonl

LITE = "yandex:yandexgpt-lite/latest"
#: The fmbot script imports the installed package; this checkout's code comes first.
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def fake() -> AsyncIterator[FakeYandexBatch]:
    async with FakeYandexBatch() as server:
        yield server


@pytest.fixture
def env(tmp_path: Path, fake: FakeYandexBatch) -> dict[str, str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("FMBOT_", "YANDEX_", "OPENAI_"))
    }
    return (
        clean
        | {"FMBOT_HOME": str(tmp_path / "home"), "FMBOT_MAX_TOKENS": "8", "COLUMNS": "200"}
        | fake.env()
        | {"FMBOT_TEXT_MODEL": LITE, "PYTHONPATH": str(ROOT)}
    )


def run_args(cases: Path, out: Path, *extra: str) -> list[str]:
    base = ["batch", "run", "-t", "default", "-i", str(cases), "-o", str(out), "--mode", "batch"]
    return [*base, *extra]


def last_user(record: dict[str, object]) -> str:
    request = record["request"]
    assert isinstance(request, list)
    return str([m["text"] for m in request if m["role"] == "user"][-1])


async def test_batch_mode_end_to_end_and_resume_of_failed_rows(
    fake: FakeYandexBatch, env: dict[str, str], tmp_path: Path
) -> None:
    messages = ["hello there", "FAIL this one", "third one"]
    cases = write_jsonl(tmp_path / "cases.jsonl", messages)
    out = tmp_path / "out.parquet"
    ran = await fmbot(run_args(cases, out), env)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("3 row(s): 2 ok, 1 failed (0 already done, 3 run now)")
    assert "3/3" in ran.stderr  # batches, from the operation's metadata
    [task] = fake.tasks.values()
    assert task.model_uri == "gpt://b1gfolder/yandexgpt-lite/latest"
    assert task.options.max_tokens.value == 8
    # Rendered like the other modes: the default template's instruction, then the message.
    assert [last_user(r) for r in task.lines] == messages
    assert task.lines[0]["request"][0]["role"] == "system"
    rows = results(out)
    assert [r["id"] for r in rows] == [0, 1, 2]
    assert [r["reply"] for r in rows] == ["echo: hello there", None, "echo: third one"]
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    # The service's reason for the line it could not process, found by the line's number.
    assert rows[1]["error"] == f"the batch task could not process this row: {fake.fail_reason}"
    assert rows[0]["latency_ms"] is None
    # Tokens from each result's usage (a nested completion result here), as the other modes fill.
    assert [(r["input_tokens"], r["output_tokens"]) for r in rows] == [
        fake.usage["hello there"],
        (None, None),
        fake.usage["third one"],
    ]
    # Both datasets (request and result) were deleted once the output was written.
    assert sorted(fake.deleted) == sorted([task.source, task.result_dataset_id])
    assert not fake.datasets
    assert not progress_path(out).exists()

    fake.report_line_errors = False  # a row left out of the result with no reason given
    again = await fmbot(run_args(cases, out, "--keep-datasets"), env)
    assert again.returncode == 0, again.stderr
    assert "(2 already done, 1 run now)" in again.stdout
    second = list(fake.tasks.values())[1]
    assert [last_user(r) for r in second.lines] == ["FAIL this one"]  # only the failed row
    assert results(out)[1]["error"] == "the batch task returned no result for this row"
    assert len(fake.datasets) == 2  # kept


async def test_no_wait_status_and_reattach(
    fake: FakeYandexBatch, env: dict[str, str], tmp_path: Path
) -> None:
    fake.total_batches = 4
    cases = write_jsonl(tmp_path / "cases.jsonl", ["a", "b"])
    out = tmp_path / "out.parquet"
    submitted = await fmbot(run_args(cases, out, "--no-wait"), env)
    assert submitted.returncode == 0, submitted.stderr
    [task] = fake.tasks.values()
    assert f"Submitted batch task {task.id}" in submitted.stdout
    assert not out.exists()
    notes = read_task_notes(progress_path(out))
    assert [n["event"] for n in notes] == ["dataset", "started"]
    assert notes[1]["task_id"] == task.id

    shown = await fmbot(["batch", "status", str(out)], env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"batch task {task.id}: in_progress, 1/4 batches")

    # --no-wait again: the same task, not a second one, and it says so.
    again = await fmbot(run_args(cases, out, "--no-wait"), env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"Still running (nothing sent again): batch task {task.id}.")
    assert len(fake.tasks) == 1

    collected = await fmbot(run_args(cases, out), env)
    assert collected.returncode == 0, collected.stderr
    assert len(fake.tasks) == 1  # re-attached, nothing submitted twice
    assert [r["reply"] for r in results(out)] == ["echo: a", "echo: b"]


async def test_interrupt_leaves_the_task_running_and_rerun_reattaches(
    fake: FakeYandexBatch, env: dict[str, str], tmp_path: Path
) -> None:
    fake.total_batches = 50  # long enough to interrupt
    cases = write_jsonl(tmp_path / "cases.jsonl", ["x", "y"])
    out = tmp_path / "out.parquet"
    proc = await asyncio.create_subprocess_exec(
        FMBOT, *run_args(cases, out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    async with asyncio.timeout(30):
        await fake.polled.wait()
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130
    [task] = fake.tasks.values()
    assert f"The batch task {task.id} keeps running" in err.decode()
    assert task.status == "IN_PROGRESS"
    fake.total_batches = 2
    again = await fmbot(run_args(cases, out), env)
    assert again.returncode == 0, again.stderr
    assert len(fake.tasks) == 1
    assert [r["status"] for r in results(out)] == ["ok", "ok"]


async def test_cancel(fake: FakeYandexBatch, env: dict[str, str], tmp_path: Path) -> None:
    fake.total_batches = 10
    cases = write_jsonl(tmp_path / "cases.jsonl", ["a"])
    out = tmp_path / "out.parquet"
    assert (await fmbot(run_args(cases, out, "--no-wait"), env)).returncode == 0
    cancelled = await fmbot(["batch", "cancel", str(out)], env)
    assert cancelled.returncode == 0, cancelled.stderr
    [task] = fake.tasks.values()
    assert task.status == "CANCELED"
    collected = await fmbot(run_args(cases, out), env)
    assert collected.returncode == 0, collected.stderr
    [row] = results(out)
    assert row["status"] == "error" and "canceled" in str(row["error"])
    nothing = await fmbot(["batch", "cancel", str(out)], env)
    assert nothing.returncode == 2 and "no batch task is recorded" in nothing.stderr


async def test_validation_errors_mark_their_rows(
    fake: FakeYandexBatch, env: dict[str, str], tmp_path: Path
) -> None:
    # The result's request and response columns as JSON text: matched and read all the same.
    fake.request_as_json = fake.response_as_json = True
    messages = ["INVALID here", "fine", "INVALID too", "also fine", "FAIL late"]
    cases = write_jsonl(tmp_path / "cases.jsonl", messages)
    out = tmp_path / "out.parquet"
    ran = await fmbot(run_args(cases, out), env)
    assert ran.returncode == 0, ran.stderr
    rows = results(out)
    assert [r["status"] for r in rows] == ["error", "ok", "error", "ok", "error"]
    assert [r["reply"] for r in rows] == [None, "echo: fine", None, "echo: also fine", None]
    assert (rows[3]["input_tokens"], rows[3]["output_tokens"]) == fake.usage["also fine"]
    assert "rejected this row's request" in str(rows[0]["error"])
    assert "rejected this row's request" in str(rows[2]["error"])
    [task] = fake.tasks.values()
    assert [last_user(r) for r in task.lines] == ["fine", "also fine", "FAIL late"]
    # Row 4 went out as the dataset's line 3: its line error is found by that number.
    assert task.line_errors == [(3, fake.fail_reason)]
    assert rows[4]["error"] == f"the batch task could not process this row: {fake.fail_reason}"


async def test_clear_errors(fake: FakeYandexBatch, env: dict[str, str], tmp_path: Path) -> None:
    cases = write_jsonl(tmp_path / "cases.jsonl", ["a"])
    out = tmp_path / "out.parquet"
    unsupported = await fmbot(run_args(cases, out, "--model", "yandex:yandexgpt-lite/rc"), env)
    assert unsupported.returncode == 1
    assert "not supported in batch mode" in unsupported.stderr
    assert len(unsupported.stderr.strip().splitlines()) == 1
    bad_key = await fmbot(run_args(cases, out), env | {"YANDEX_API_KEY": "wrong-key-8f3a"})
    assert bad_key.returncode == 1
    assert "rejected the API key" in bad_key.stderr
    assert len(bad_key.stderr.strip().splitlines()) == 1
    assert "8f3a" not in bad_key.stderr  # never the secret itself
    fake.quota_exceeded = True
    quota = await fmbot(run_args(cases, out), env)
    assert quota.returncode == 1, quota.stderr
    assert "refused to start the batch task: a quota" in quota.stderr
    assert len(quota.stderr.strip().splitlines()) == 1
    assert not progress_path(out).exists() and not fake.datasets  # nothing left behind
    local = await fmbot(run_args(cases, out, "--model", "echo:"), env)
    assert local.returncode == 2 and "batch mode needs a yandex: model" in local.stderr
    assert not fake.tasks
    assert json.loads(cases.read_text().splitlines()[0])["message"] == "a"


def test_grpc_stays_out_of_the_bot_and_the_cli() -> None:
    code = (
        "import sys, adapters.cli.main, adapters.cli.batch, bot.app, bot.batch.batch_mode;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'yandex')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


async def test_failed_task_marks_its_rows_and_a_rerun_sends_them_again(
    fake: FakeYandexBatch, env: dict[str, str], tmp_path: Path
) -> None:
    fake.fail_tasks = True
    cases = write_jsonl(tmp_path / "cases.jsonl", ["a", "b"])
    out = tmp_path / "out.parquet"
    ran = await fmbot(run_args(cases, out), env)
    assert ran.returncode == 0, ran.stderr
    rows = results(out)
    assert [r["status"] for r in rows] == ["error", "error"]
    assert "ended failed: batch task failed: internal error" in str(rows[0]["error"])
    assert "run the same command again" in ran.stdout  # failures worth a retry
    fake.fail_tasks = False
    again = await fmbot(run_args(cases, out), env)
    assert again.returncode == 0, again.stderr
    assert [r["reply"] for r in results(out)] == ["echo: a", "echo: b"]
    assert len(fake.tasks) == 2


async def test_credential_rejected_while_waiting_says_how_to_come_back(
    fake: FakeYandexBatch, env: dict[str, str], tmp_path: Path
) -> None:
    cases = write_jsonl(tmp_path / "cases.jsonl", ["a"])
    out = tmp_path / "out.parquet"
    assert (await fmbot(run_args(cases, out, "--no-wait"), env)).returncode == 0
    [task] = fake.tasks.values()
    expired = await fmbot(run_args(cases, out), env | {"YANDEX_API_KEY": "revoked"})
    assert expired.returncode == 1
    [line] = [x for x in expired.stderr.splitlines() if x.startswith("fmbot:")]
    assert "rejected the API key" in line and f"batch task {task.id} keeps running" in line
    assert read_task_notes(progress_path(out))  # nothing lost: the next run re-attaches
    assert (await fmbot(run_args(cases, out), env)).returncode == 0
    assert len(fake.tasks) == 1


async def test_unknown_mode(env: dict[str, str], tmp_path: Path) -> None:
    cases = write_jsonl(tmp_path / "cases.jsonl", ["a"])
    args = ["batch", "run", "-t", "default", "-i", str(cases), "-o", str(tmp_path / "o.parquet")]
    ran = await fmbot([*args, "--mode", "turbo"], env)
    assert ran.returncode == 2
    assert "--mode" in ran.stderr and "sync, stream, async, batch" in ran.stderr


async def test_plain_text_responses_leave_the_token_columns_empty(
    fake: FakeYandexBatch, env: dict[str, str], tmp_path: Path
) -> None:
    fake.plain_response = True  # the dataset docs' form: the response is the reply's text
    cases = write_jsonl(tmp_path / "cases.jsonl", ["one", "two"])
    out = tmp_path / "out.parquet"
    ran = await fmbot(run_args(cases, out), env)
    assert ran.returncode == 0, ran.stderr
    rows = results(out)
    assert [r["reply"] for r in rows] == ["echo: one", "echo: two"]
    assert [(r["input_tokens"], r["output_tokens"]) for r in rows] == [(None, None)] * 2


async def test_exit_non_zero_only_when_nothing_could_be_submitted(
    fake: FakeYandexBatch, env: dict[str, str], tmp_path: Path
) -> None:
    # One row validation rejects, one whose empty message the template cannot use: no task.
    cases = write_jsonl(tmp_path / "cases.jsonl", ["INVALID one", ""])
    out = tmp_path / "out.parquet"
    for extra in ((), ("--no-wait",)):
        refused = await fmbot(run_args(cases, out, *extra), env)
        assert refused.returncode == 1, refused.stdout
        [line] = refused.stderr.strip().splitlines()
        assert line.startswith("fmbot: Nothing was submitted: all 2 row(s)")
        assert f"'error' column of {out}" in line and "run the same command again" in line
        assert not fake.tasks
        rows = results(out)  # nothing lost: the reasons are in the output
        assert [r["status"] for r in rows] == ["error", "error"]
        assert "rejected this row's request" in str(rows[0]["error"])
        assert "'message' column is empty" in str(rows[1]["error"])
    assert not fake.datasets  # the rejected request dataset was deleted

    # Once a task runs, the run succeeds even though a row fails.
    write_jsonl(cases, ["fixed", "FAIL again"])
    ran = await fmbot(run_args(cases, out), env)
    assert ran.returncode == 0, ran.stderr
    assert [r["status"] for r in results(out)] == ["ok", "error"]
    assert len(fake.tasks) == 1

    # Nothing left to run is not a failure either.
    write_jsonl(cases, ["fixed"])
    done = await fmbot(run_args(cases, out), env)
    assert done.returncode == 0, done.stderr
    assert "(1 already done, 0 run now)" in done.stdout
    assert len(fake.tasks) == 1


async def test_a_rerun_after_a_failed_start_is_quiet_about_datasets_already_deleted(
    fake: FakeYandexBatch, env: dict[str, str], tmp_path: Path
) -> None:
    cases = write_jsonl(tmp_path / "cases.jsonl", ["INVALID x", "fine"])
    out = tmp_path / "out.parquet"
    fake.quota_exceeded = True  # validation rejects a row (kept), then the start is refused
    refused = await fmbot(run_args(cases, out), env)
    assert refused.returncode == 1 and "quota" in refused.stderr
    assert not fake.datasets and len(fake.deleted) == 2  # both uploads cleaned up at once
    ran = await fmbot(run_args(cases, out), env)
    assert ran.returncode == 0, ran.stderr
    assert "could not delete" not in ran.stderr, ran.stderr
    assert ran.stderr.count("\n") <= 1 and not fake.datasets  # only the progress bar's line
    assert [r["status"] for r in results(out)] == ["error", "ok"]


async def test_status_of_a_task_the_service_no_longer_has(
    fake: FakeYandexBatch, env: dict[str, str], tmp_path: Path
) -> None:
    cases = write_jsonl(tmp_path / "cases.jsonl", ["a"])
    out = tmp_path / "out.parquet"
    assert (await fmbot(run_args(cases, out, "--no-wait"), env)).returncode == 0
    [task] = fake.tasks.values()
    fake.operations.clear()  # e.g. expired on the service's side
    shown = await fmbot(["batch", "status", str(out)], env)
    assert shown.returncode == 1
    [line] = shown.stderr.strip().splitlines()
    assert f"has no operation {task.operation_id}" in line and "model" not in line

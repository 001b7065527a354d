"""``fmbot batch run/compare`` as a user runs them: real processes, the real local model, and
the fake Yandex service (stream and async operations) over real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bot.batch.checkpoint import progress_path
from tests.fakes import FakeYandex, Fault

FMBOT = shutil.which("fmbot", path=str(Path(sys.executable).parent)) or "fmbot"
LITE = "yandex:yandexgpt-lite/latest"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("FMBOT_", "YANDEX_", "OPENAI_"))
    }
    return clean | {"FMBOT_HOME": str(tmp_path / "home"), "FMBOT_MAX_TOKENS": "8", "COLUMNS": "200"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeYandex]:
    async with FakeYandex(operation_polls=1) as server:
        yield server


@pytest.fixture
def yandex_env(env: dict[str, str], fake: FakeYandex) -> dict[str, str]:
    return env | {
        "YANDEX_API_KEY": fake.api_key,
        "YANDEX_FOLDER_ID": fake.folder_id,
        "YANDEX_FM_URL": fake.llm_url,
        "YANDEX_OPERATIONS_URL": fake.operations_url,
        "FMBOT_TEXT_MODEL": LITE,
    }


async def fmbot(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run fmbot without blocking the event loop the fake server answers on."""
    proc = await asyncio.create_subprocess_exec(
        FMBOT, *args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


def write_jsonl(path: Path, messages: list[str]) -> Path:
    path.write_text(
        "".join(json.dumps({"message": m, "id": i}) + "\n" for i, m in enumerate(messages))
    )
    return path


def sent_messages(fake: FakeYandex, suffix: str) -> list[str]:
    return [r.body["messages"][-1]["text"] for r in fake.requests_to(suffix)]


def results(path: Path) -> list[dict[str, object]]:
    return pq.read_table(path).to_pylist()


def test_local_model_end_to_end(env: dict[str, str], tmp_path: Path) -> None:
    cases = tmp_path / "cases.csv"
    cases.write_text("message,bot_name\nSay hi.,Zed\nWhat is 2+2?,\n")
    out = tmp_path / "out" / "results.parquet"
    result = subprocess.run(
        [FMBOT, "batch", "run", "-t", "default", "-i", str(cases), "-o", str(out), "-c", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("2 row(s): 2 ok, 0 failed (0 already done, 2 run now)")
    assert "2/2" in result.stderr  # the progress bar
    rows = results(out)
    assert [(r["message"], r["bot_name"], r["status"]) for r in rows] == [
        ("Say hi.", "Zed", "ok"),
        ("What is 2+2?", None, "ok"),
    ]
    for r in rows:
        assert isinstance(r["reply"], str) and r["reply"]
        assert 0 < int(str(r["output_tokens"])) <= 8  # FMBOT_MAX_TOKENS is a ceiling
        assert int(str(r["input_tokens"])) > 10 and int(str(r["latency_ms"])) > 0


async def test_yandex_stream_then_async_then_compare(
    fake: FakeYandex, yandex_env: dict[str, str], tmp_path: Path
) -> None:
    messages = ["hello there", "[red]markup[/red] <i>tag</i>", "third one"]
    cases = write_jsonl(tmp_path / "cases.jsonl", messages)
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"

    ran = await fmbot(["batch", "run", "-t", "default", "-i", str(cases), "-o", str(a)], yandex_env)
    assert ran.returncode == 0, ran.stderr
    assert sorted(sent_messages(fake, "/completion")) == sorted(messages)
    assert all(r.body["completionOptions"]["stream"] for r in fake.requests_to("/completion"))
    rows = results(a)
    assert [r["reply"] for r in rows] == [f"Echo: {m}" for m in messages]
    assert [r["id"] for r in rows] == [0, 1, 2]
    assert rows[0]["input_tokens"] == sum(
        1 + len(m["text"].split()) for m in fake.requests_to("/completion")[0].body["messages"]
    )

    args = ["batch", "run", "-t", "default", "-i", str(cases), "-o", str(b), "--async"]
    ran = await fmbot(args, yandex_env)
    assert ran.returncode == 0, ran.stderr
    assert sorted(sent_messages(fake, "/completionAsync")) == sorted(messages)
    assert len(fake.requests_to("/completion")) == 3  # nothing more went the streaming way
    assert len([r for r in fake.requests if "/operations/" in r.path]) >= 3
    assert [r["reply"] for r in results(b)] == [f"Echo: {m}" for m in messages]

    html = tmp_path / "cmp.html"
    shown = await fmbot(["batch", "compare", str(a), str(b), "--html", str(html)], yandex_env)
    assert shown.returncode == 0, shown.stderr
    assert "[red]markup[/red]" in shown.stdout  # shown as written, not as rich markup
    assert "rows: A 3, B 3; changed (reply or status): 0" in shown.stdout
    assert "errors: A 0, B 0" in shown.stdout
    assert (
        "mean latency ms: A " in shown.stdout and "mean output tokens: A 3.0, B 3.0" in shown.stdout
    )
    page = html.read_text()
    assert "&lt;i&gt;tag&lt;/i&gt;" in page and "<i>tag" not in page


async def test_failed_rows_are_recorded_then_retried(
    fake: FakeYandex, yandex_env: dict[str, str], tmp_path: Path
) -> None:
    messages = [f"case {i}" for i in range(4)]
    cases = write_jsonl(tmp_path / "cases.jsonl", messages)
    out = tmp_path / "out.parquet"
    fake.inject(Fault("content_filter"), times=2, path="/completion")
    args = ["batch", "run", "-t", "default", "-i", str(cases), "-o", str(out), "-c", "1"]

    first = await fmbot(args, yandex_env)
    assert first.returncode == 0, first.stderr  # row failures are not fatal
    assert first.stdout.startswith("4 row(s): 2 ok, 2 failed")
    rows = results(out)
    failed = [str(r["message"]) for r in rows if r["status"] == "error"]
    assert failed == ["case 0", "case 1"]
    assert all("content filter" in str(r["error"]) for r in rows if r["status"] == "error")

    fake.requests.clear()
    second = await fmbot(args, yandex_env)
    assert second.returncode == 0, second.stderr
    assert sent_messages(fake, "/completion") == failed  # done rows were not sent again
    assert second.stdout.startswith("4 row(s): 4 ok, 0 failed (2 already done, 2 run now)")


async def test_killed_run_resumes_without_resending_done_rows(
    fake: FakeYandex, yandex_env: dict[str, str], tmp_path: Path
) -> None:
    messages = [f"row {i}" for i in range(6)]
    cases = write_jsonl(tmp_path / "cases.jsonl", messages)
    out = tmp_path / "out.parquet"
    progress = progress_path(out)
    fake.stream_delay = 0.15  # each reply takes ~0.3 s: time to kill mid-run
    args = ["batch", "run", "-t", "default", "-i", str(cases), "-o", str(out), "-c", "2"]

    proc = await asyncio.create_subprocess_exec(
        FMBOT, *args, env=yandex_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    async with asyncio.timeout(30):
        # Another process writes the file: polling is the only way to see it grow.
        while not progress.exists() or len(progress.read_text().splitlines()) < 3:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    proc.kill()
    await proc.wait()
    assert not out.exists()  # it died before the end
    saved = [json.loads(line) for line in progress.read_text().splitlines()[1:]]
    done = {messages[s["row"]] for s in saved if s["status"] == "ok"}
    assert 2 <= len(done) < 6

    fake.requests.clear()
    fake.stream_delay = 0
    again = await fmbot(args, yandex_env)
    assert again.returncode == 0, again.stderr
    resent = sent_messages(fake, "/completion")
    assert not done & set(resent)
    assert sorted(resent) == sorted(set(messages) - done)
    assert [r["reply"] for r in results(out)] == [f"Echo: {m}" for m in messages]
    assert not progress.exists()


async def test_configuration_errors_exit_2(
    yandex_env: dict[str, str], env: dict[str, str], tmp_path: Path
) -> None:
    cases = write_jsonl(tmp_path / "cases.jsonl", ["x"])
    base = ["batch", "run", "-i", str(cases), "-o", str(tmp_path / "o.parquet")]
    for args, start in [
        ([*base, "-t", "nope"], "--template='nope' is not valid"),
        ([*base, "-t", "default", "--var", "colour=red"], "--var='colour=red' is not valid"),
        ([*base, "-t", "default", "--async", "--model", "local:smollm2"], "--async="),
        ([*base[:-1], str(tmp_path / "o.csv"), "-t", "default"], "--output="),
    ]:
        result = await fmbot(args, yandex_env)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith(f"fmbot: configuration error: {start}"), result.stderr
    missing = await fmbot([*base, "-t", "default", "--model", LITE], env)  # no credentials
    assert missing.returncode == 2 and "YANDEX_API_KEY" in missing.stderr


async def test_bad_cells_are_not_advertised_as_retryable(
    fake: FakeYandex, yandex_env: dict[str, str], tmp_path: Path
) -> None:
    cases = tmp_path / "cases.csv"
    cases.write_text("message,words\nOak desk,80\nPine shelf,many\n")
    out = tmp_path / "out.parquet"
    fake.inject(Fault("cut"), times=1, path="/completion")  # row 0: a network failure
    args = ["batch", "run", "-t", "product-description", "-i", str(cases), "-o", str(out)]

    first = await fmbot([*args, "-c", "1"], yandex_env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("2 row(s): 0 ok, 2 failed")
    assert "row 1: variable 'words' takes an integer (its default is 120), not 'many'" in (
        first.stdout
    )
    advice = first.stdout.splitlines()[-2:]
    assert advice[0].startswith("1 row(s) failed on the way to the model")
    assert advice[0].endswith("run the same command again to retry them.")
    assert advice[1].startswith("1 row(s) have input the template cannot use (rows 1;")
    assert "fix those cells" in advice[1]

    again = await fmbot(args, yandex_env)
    assert again.stdout.startswith("2 row(s): 1 ok, 1 failed")
    assert "retry" not in again.stdout.replace("Retrying them unchanged fails", "")
    assert "fix those cells" in again.stdout


def write_run(path: Path, replies: list[str]) -> Path:
    rows = [
        {"message": f"m{i}", "row": i, "reply": r, "status": "ok", "error": None}
        for i, r in enumerate(replies)
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_compare_changed_only_counts_hidden_changed_rows(
    env: dict[str, str], tmp_path: Path
) -> None:
    a = write_run(tmp_path / "a.parquet", ["same", "old 1", "same", "old 3", "same", "same"])
    b = write_run(tmp_path / "b.parquet", ["same", "new 1", "same", "new 3", "same", "same"])
    args = [FMBOT, "batch", "compare", str(a), str(b), "--changed-only", "--limit", "1"]
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "new 1" in result.stdout and "new 3" not in result.stdout
    assert "(1 more changed row(s) not shown; see --limit, --changed-only)" in result.stdout


def test_compare_shows_control_sequences_instead_of_sending_them(
    env: dict[str, str], tmp_path: Path
) -> None:
    a = write_run(tmp_path / "a.parquet", ["clear \x1b[2J here", "title \x1b]0;pwned\x07"])
    b = write_run(tmp_path / "b.parquet", ["plain", "plain"])
    args = [FMBOT, "batch", "compare", str(a), str(b)]
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "clear ^[[2J here" in result.stdout and "title ^[]0;pwned^G" in result.stdout
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout

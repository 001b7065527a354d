"""Batch runs in process: inputs, variables, failures, resuming, comparing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bot.batch import table
from bot.batch.checkpoint import progress_path
from bot.batch.compare import compare_runs, to_html
from bot.batch.job import run_job
from bot.batch.model import model_identity, with_async_mode
from bot.batch.runner import Runner
from bot.errors import ConfigError, ContentFilterError
from bot.events import Message, Usage
from bot.models.base import Chunk, GenerationOptions, TextModel
from bot.prompts.loader import load_template
from bot.prompts.template import PromptTemplate

OPTIONS = GenerationOptions(max_tokens=20)


class Echo(TextModel):
    """Replies ``<system> | <user>``; fails for user texts containing ``fail``. Records requests."""

    def __init__(self, name: str = "echo:test", prefix: str = "") -> None:
        self.name = name
        self.prefix = prefix
        self.requests: list[list[Message]] = []
        self.fail = True

    @property
    def context_window(self) -> int:
        return 4096

    async def count_tokens(self, messages: Sequence[Message]) -> int:
        return sum(len(m.text.split()) for m in messages)

    async def generate(
        self, messages: Sequence[Message], options: GenerationOptions
    ) -> AsyncIterator[Chunk]:
        self.requests.append(list(messages))
        user = messages[-1].text
        if self.fail and "fail" in user:
            raise ContentFilterError("Refused by the test filter.")
        yield f"{self.prefix}{messages[0].text} | {user}"
        yield Usage(input_tokens=len(messages), output_tokens=2)

    def users(self) -> list[str]:
        return [r[-1].text for r in self.requests]


@pytest.fixture
def template(tmp_path: Path) -> PromptTemplate:
    path = tmp_path / "t.yaml"
    path.write_text(
        "name: t\ninstruction: 'Tone {{ tone }}, {{ n * 2 }}'\ntask: 'Q: {{ message }}'\n"
        "variables:\n  tone: plain\n  n: 1\n"
    )
    return load_template(path)


CASES = [
    {"message": "hello", "tone": "warm", "n": "5", "id": "007"},
    {"message": "please fail", "tone": None, "n": None, "id": "008"},
    {"message": "bye", "tone": None, "n": "x", "id": "009"},  # n is not an integer
]


def write_input(tmp_path: Path, kind: str, rows: list[dict[str, object]] = CASES) -> Path:
    path = tmp_path / f"cases.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "csv":
        cols = list(rows[0])
        lines = [",".join(cols)] + [
            ",".join("" if r[c] is None else str(r[c]) for c in cols) for r in rows
        ]
        path.write_text("\n".join(lines) + "\n")
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


async def run(
    template: PromptTemplate,
    model: TextModel,
    input_path: Path,
    output: Path,
    fixed: dict[str, str] | None = None,
) -> tuple[list[dict[str, object]], object]:
    runner = Runner(template, model, OPTIONS, fixed or {})
    summary = await run_job(runner, input_path, output, concurrency=3)
    return pq.read_table(output).to_pylist(), summary


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
async def test_every_input_format_runs_and_keeps_its_columns(
    tmp_path: Path, template: PromptTemplate, kind: str
) -> None:
    model = Echo()
    rows, summary = await run(template, model, write_input(tmp_path, kind), tmp_path / "o.parquet")
    assert [r["id"] for r in rows] == ["007", "008", "009"]  # "007" stays text, order kept
    assert [r["row"] for r in rows] == [0, 1, 2]
    ok = rows[0]
    assert (ok["status"], ok["error"]) == ("ok", None)
    assert ok["reply"] == "Tone warm, 10 | Q: hello"  # columns fill variables, typed
    assert (ok["input_tokens"], ok["output_tokens"]) == (2, 2)
    assert isinstance(ok["latency_ms"], int)
    failed = rows[1]
    assert (failed["status"], failed["reply"]) == ("error", None)
    assert failed["error"] == "Refused by the test filter."
    assert rows[2]["status"] == "error"
    assert "variable 'n' takes an integer" in str(rows[2]["error"])
    assert summary.ok == 1 and summary.errors == 2  # type: ignore[attr-defined]
    assert not progress_path(tmp_path / "o.parquet").exists()  # folded into the Parquet file


async def test_fixed_variables_apply_unless_a_column_says_otherwise(
    tmp_path: Path, template: PromptTemplate
) -> None:
    rows = [{"message": "a", "tone": None}, {"message": "b", "tone": "sharp"}]
    out, _ = await run(
        template, Echo(), write_input(tmp_path, "jsonl", rows), tmp_path / "o.parquet", {"n": "3"}
    )
    assert [r["reply"] for r in out] == ["Tone plain, 6 | Q: a", "Tone sharp, 6 | Q: b"]


async def test_an_input_with_a_passages_column_runs_and_keeps_it(
    tmp_path: Path, template: PromptTemplate
) -> None:
    # Retrieval datasets often carry their own passages: a column the results do not add.
    rows = [{"message": "hi", "passages": "[1] gold passage"}]
    out, _ = await run(
        template, Echo(), write_input(tmp_path, "jsonl", rows), tmp_path / "o.parquet"
    )
    assert out[0]["status"] == "ok" and out[0]["passages"] == "[1] gold passage"
    assert out[0]["retrieved"] is None  # a template without knowledge: null, as README says


async def test_rerun_sends_only_failed_and_changed_rows(
    tmp_path: Path, template: PromptTemplate
) -> None:
    input_path = write_input(tmp_path, "jsonl")
    output = tmp_path / "o.parquet"
    await run(template, Echo(), input_path, output)

    healthy = Echo()
    healthy.fail = False
    rows, summary = await run(template, healthy, input_path, output)
    assert healthy.users() == ["Q: please fail"]  # row 2 cannot render: fails before sending
    assert summary.skipped == 1 and summary.ran == 2  # type: ignore[attr-defined]
    assert [r["status"] for r in rows] == ["ok", "ok", "error"]

    edited = [dict(CASES[0], message="hello again"), CASES[1], dict(CASES[2], n="2")]
    again = Echo()
    rows, _ = await run(template, again, write_input(tmp_path, "jsonl", edited), output)
    assert sorted(again.users()) == ["Q: bye", "Q: hello again"]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok"]


async def test_resume_from_progress_file_with_a_torn_last_line(
    tmp_path: Path, template: PromptTemplate
) -> None:
    rows = [{"message": f"m{i}"} for i in range(4)]
    input_path = write_input(tmp_path, "jsonl", rows)
    output = tmp_path / "o.parquet"
    first = Echo()
    await run(template, first, input_path, output)
    # Simulate a run killed after two rows: the progress file of a fresh run, cut mid-line.
    keys = json.loads(pq.read_table(output).schema.metadata[b"fmbot.keys"])
    output.unlink()
    header = {"kind": "fmbot-batch-progress", "template": "t", "model": "echo:test"}
    done = [
        {"row": i, "key": keys[i], "status": "ok", "reply": f"saved {i}", "latency_ms": 1}
        for i in (0, 2)
    ]
    lines = [json.dumps(x) for x in (header, *done)]
    progress_path(output).write_text("\n".join(lines) + '\n{"row": 3, "key": "ab')

    model = Echo()
    out, summary = await run(template, model, input_path, output)
    assert sorted(model.users()) == ["Q: m1", "Q: m3"]
    replies = [r["reply"] for r in out]
    assert replies == ["saved 0", "Tone plain, 2 | Q: m1", "saved 2", "Tone plain, 2 | Q: m3"]
    assert summary.skipped == 2  # type: ignore[attr-defined]


async def test_output_of_another_template_or_model_is_not_mixed_in(
    tmp_path: Path, template: PromptTemplate
) -> None:
    input_path = write_input(tmp_path, "jsonl")
    output = tmp_path / "o.parquet"
    await run(template, Echo(), input_path, output)
    with pytest.raises(ConfigError, match=r"holds results of model 'echo:test', not 'echo:other'"):
        await run(template, Echo("echo:other"), input_path, output)
    # Another mode of the same model is the same model: resuming with --async is fine.
    assert model_identity("yandex:yandexgpt/latest?mode=async") == "yandex:yandexgpt/latest"


def test_async_mode_spec() -> None:
    assert (
        with_async_mode("yandex:yandexgpt-lite/latest") == "yandex:yandexgpt-lite/latest?mode=async"
    )
    assert with_async_mode("yandex:yandexgpt/rc?mode=stream") == "yandex:yandexgpt/rc?mode=async"
    with pytest.raises(ConfigError, match=r"^--async='local:smollm2' is not valid"):
        with_async_mode("local:smollm2")


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([{"text": "hi"}], r"no 'message' column \(columns: text\)"),
        ([{"message": "hi", "status": "x"}], r"columns status clash with the result columns"),
    ],
)
async def test_bad_inputs_are_configuration_errors(
    tmp_path: Path, template: PromptTemplate, rows: list[dict[str, object]], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        await run(template, Echo(), write_input(tmp_path, "jsonl", rows), tmp_path / "o.parquet")


def test_unreadable_inputs(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"message": "ok"}\n{oops\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2' is not valid: not valid JSON"):
        table.read_input(bad)
    with pytest.raises(ConfigError, match=r"give a .jsonl, .csv or .parquet file"):
        table.read_input(tmp_path / "cases.xlsx")


async def test_compare_summary_and_escaped_html(tmp_path: Path, template: PromptTemplate) -> None:
    rows = [
        {"message": "<script>alert('x')</script>"},
        {"message": "same & same"},
        {"message": "now fail"},
    ]
    input_path = write_input(tmp_path, "jsonl", rows)
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    healthy = Echo()
    healthy.fail = False
    await run(template, healthy, input_path, a)
    await run(template, Echo(prefix='<b onclick="x">'), input_path, b)
    comparison = compare_runs(a, b)
    assert comparison.changed == 3
    assert (comparison.stats_a.errors, comparison.stats_b.errors) == (0, 1)
    assert comparison.stats_a.mean_output_tokens == 2.0

    page = to_html(comparison)
    assert "<script>" not in page and "onclick=" not in page.replace("onclick=&quot;", "")
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "&lt;b onclick=&quot;x&quot;&gt;" in page
    assert "same &amp; same" in page
    assert "Refused by the test filter." in page
    assert page.count("<tr class=") == 3


async def test_output_problems_are_configuration_errors(
    tmp_path: Path, template: PromptTemplate
) -> None:
    input_path = write_input(tmp_path, "jsonl")
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.Table.from_pylist([{"a": 1}]), foreign)
    with pytest.raises(ConfigError, match="was not written by `fmbot batch run`"):
        await run(template, Echo(), input_path, foreign)
    assert pq.read_table(foreign).to_pylist() == [{"a": 1}]  # left alone

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="cannot write there"):
        await run(template, Echo(), input_path, blocker / "o.parquet")

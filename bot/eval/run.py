"""A whole evaluation: every case × template version × model (× repeat), graded.

Each template version × model × repeat is one batch job (:func:`bot.batch.job.run_job`) into
``DIR/runs/``, so an evaluation has the batch runner's resume, bounded concurrency and progress:
an interrupted run picks up where it stopped, and a job's file name holds the template's digest,
so an edited template runs again instead of resuming from its old replies. With ``--mode batch``
each job is a Yandex batch task (:func:`bot.batch.batch_mode.run_batch_mode`) instead, all of
them at once. Knowledge templates retrieve each case's passages as the bot does.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bot.batch import table
from bot.batch.batch_mode import run_batch_mode
from bot.batch.checkpoint import RowResult
from bot.batch.job import Progress, run_job, unwritable
from bot.batch.model import batch_settings, options_for
from bot.batch.runner import Runner
from bot.errors import ConfigError
from bot.eval.assertions import Reply, cell_score
from bot.eval.grading import (
    GradedAssertion,
    Graders,
    Wrap,
    cached,
    embedder_for,
    grade,
    judge_for,
    retriever_for,
    similar_for,
)
from bot.eval.suite import LoadedSuite, Version, as_run
from bot.kb.retrieval import Retriever
from bot.models.registry import get_text_model

if TYPE_CHECKING:
    from bot.batch.yandex import BatchClient, TaskState
    from bot.settings import Settings

RESULTS = "results.parquet"
SUITE_AS_RUN = "suite.yaml"
CACHE_DIR = ("cache", "eval")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def example_suite() -> str:
    """The commented example ``fmbot eval init`` writes."""
    return (Path(__file__).parent / "example.yaml").read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class CellKey:
    """Which cell: the case (its index in the suite), template version, model and repeat."""

    case: int
    template: str
    model: str
    repeat: int


@dataclass(frozen=True, slots=True)
class Cell:
    key: CellKey
    message: str
    values: dict[str, object]
    reply: str | None
    status: str
    error: str | None
    input_tokens: int | None
    output_tokens: int | None
    latency_ms: int | None
    passed: bool
    score: float
    graded: tuple[GradedAssertion, ...]
    #: The passages retrieved for the cell (n, kb, source, heading, chunk, score, text); None:
    #: its template has no ``knowledge``.
    passages: list[dict[str, object]] | None = None

    def failures(self) -> list[str]:
        """Why the cell failed, one line per reason."""
        if self.status != "ok":
            return [f"{self.status}: {self.error or 'no reply'}"]
        return [
            f"{g.assertion.label}: {g.outcome.reason}"
            for g in self.graded
            if not g.outcome.passed and g.assertion.weight > 0
        ]


@dataclass
class EvalResult:
    cells: list[Cell] = field(default_factory=list)
    threshold: float = 1.0
    repeats: int = 1


def cache_dir(home: Path) -> Path:
    """The evaluation cache under ``home`` (FMBOT_HOME)."""
    return home.joinpath(*CACHE_DIR)


def _slug(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("_")[:60] or "x"


def _job_name(index: int, version: Version, model: str, repeat: int) -> str:
    # The digests keep names apart that slug alike (yandex:m/latest, yandex:m?latest) and make
    # an edited template a new job rather than a resumed one.
    model_digest = hashlib.sha256(model.encode()).hexdigest()[:6]
    slug = f"{_slug(version.ref)}-{_slug(model)}"
    return f"{index}-{slug}-{version.digest}-{model_digest}-r{repeat}"


def cell_value(value: object) -> object:
    # Cases go to the batch runner as JSONL, where a column must keep one type: variables
    # become text (templates convert them back to their types), like CSV cells.
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _write_cases(path: Path, rows: list[dict[str, object]]) -> None:
    text = "".join(
        json.dumps({k: cell_value(v) for k, v in row.items()}, ensure_ascii=False) + "\n"
        for row in rows
    )
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def _number(value: object) -> int | None:
    return None if value is None else int(str(value))


async def run_eval(
    loaded: LoadedSuite,
    output: Path,
    settings: Settings,
    *,
    repeat: int = 1,
    concurrency: int = 4,
    progress: Progress | None = None,
    cache: Path | None = None,
    only: set[tuple[int, str, str]] | None = None,
    batch: BatchClient | None = None,
) -> EvalResult:
    """Run and grade the suite into ``output`` (a directory). ``settings``: those the suite was
    loaded with (its embedder and knowledge bases are found with them). ``only``: the (case,
    template, model) cells to run (``--filter-failing``); ``cache``: the cache's directory (None:
    send every request); ``batch``: run each job as a Yandex batch task with this client (``--mode
    batch``: every model a ``yandex:`` one)."""
    runs = output / "runs"
    try:
        runs.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(
            (output / SUITE_AS_RUN).write_text, as_run(loaded), encoding="utf-8"
        )
    except OSError as exc:
        raise unwritable(output, exc) from exc
    wrap = cached(cache) if cache is not None else None
    embedder = embedder_for(loaded, settings, cache)
    retriever = retriever_for(loaded, settings, embedder)
    try:
        graders = Graders(await judge_for(loaded, wrap), similar_for(loaded, embedder))
        run = _Run(loaded, runs, concurrency, progress, wrap, graders, retriever, batch)
        return await run.all(repeat, only)
    finally:
        if retriever is not None:
            await retriever.aclose()  # and its embedder
        elif embedder is not None:
            await embedder.aclose()


@dataclass(frozen=True, slots=True)
class _Job:
    """One batch job: a template version × model × repeat over the chosen cases."""

    index: int
    version: Version
    spec: str
    repeat: int
    chosen: list[int]


@dataclass
class _Run:
    loaded: LoadedSuite
    runs: Path
    concurrency: int
    progress: Progress | None
    wrap: Wrap | None
    graders: Graders
    retriever: Retriever | None
    batch: BatchClient | None

    async def all(self, repeat: int, only: set[tuple[int, str, str]] | None) -> EvalResult:
        loaded = self.loaded
        jobs = []
        for index, version in enumerate(loaded.versions):
            for spec in loaded.models:
                chosen = [
                    i
                    for i in range(len(loaded.cases))
                    if only is None or (i, version.ref, spec) in only
                ]
                if chosen:
                    jobs += [_Job(index, version, spec, r, chosen) for r in range(repeat)]
        result = EvalResult(threshold=loaded.suite.threshold, repeats=repeat)
        grading = asyncio.Semaphore(max(1, self.concurrency))
        if self.batch is not None:
            # Every job is a task on the service: they wait there side by side. A failure
            # cancels the others before the caller closes the client and retriever they use
            # (their tasks keep running on the service, noted for the next run to collect).
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(self._job(job, grading)) for job in jobs]
            except BaseExceptionGroup as failed:
                raise failed.exceptions[0] from None  # the first failure's one line, not a group
            done = [task.result() for task in tasks]
        else:
            done = [await self._job(job, grading) for job in jobs]  # each one bounded itself
        for cells in done:
            result.cells += cells
        return result

    async def _job(self, job: _Job, grading: asyncio.Semaphore) -> list[Cell]:
        loaded, template = self.loaded, job.version.template
        name = _job_name(job.index, job.version, job.spec, job.repeat)
        cases_path = self.runs / f"{name}.cases.jsonl"
        await asyncio.to_thread(
            _write_cases, cases_path, [loaded.cases[i].values for i in job.chosen]
        )
        fixed = {k: str(cell_value(v)) for k, v in loaded.suite.vars.items()}
        settings = batch_settings(job.spec, False)
        out = self.runs / f"{name}.parquet"
        if self.batch is not None:
            await run_batch_mode(
                self.batch,
                template,
                job.spec,
                options_for(settings, template),
                fixed,
                cases_path,
                out,
                progress=_BatchProgress(self.progress),
                retriever=self.retriever,
            )
        else:
            model = await get_text_model(settings)
            runner = Runner(
                template,
                self.wrap(model, job.repeat) if self.wrap else model,
                options_for(settings, template),
                fixed,
                self.retriever,
            )
            await run_job(
                runner, cases_path, out, concurrency=self.concurrency, progress=self.progress
            )
        rows = (await asyncio.to_thread(table.read_parquet, out)).rows

        async def grade(i: int, row: dict[str, object]) -> Cell:
            async with grading:  # judge calls in flight, like the cells' requests
                key = CellKey(i, job.version.ref, job.spec, job.repeat)
                return await _cell(loaded, key, row, self.graders)

        return list(
            await asyncio.gather(*(grade(i, row) for i, row in zip(job.chosen, rows, strict=True)))
        )


class _BatchProgress:
    """A batch task reports its rows like a job does; its own state is not shown per cell."""

    def __init__(self, inner: Progress | None) -> None:
        self.inner = inner

    def start(self, total: int, done: int) -> None:
        if self.inner is not None:
            self.inner.start(total, done)

    def advance(self, result: RowResult) -> None:
        if self.inner is not None:
            self.inner.advance(result)

    def task(self, state: TaskState) -> None:
        pass


async def _cell(
    loaded: LoadedSuite, key: CellKey, row: dict[str, object], graders: Graders
) -> Cell:
    case = loaded.cases[key.case]
    message = str(case.values.get("message") or "")
    status = str(row.get("status"))
    passages = _passages(row.get("retrieved"))
    graded: list[GradedAssertion] = []
    if status == "ok":
        reply = Reply(
            str(row.get("reply") or ""),
            _number(row["output_tokens"]),
            _number(row["latency_ms"]),
            None if passages is None else tuple(int(str(p["n"])) for p in passages),
        )
        assertions = [*loaded.suite.assertions, *case.assertions]
        graded = await grade(assertions, reply, message, graders)
        passed, score = cell_score([(g.assertion, g.outcome) for g in graded])
    else:
        passed, score = False, 0.0
    return Cell(
        key=key,
        message=message,
        values={k: v for k, v in case.values.items() if k != "message"},
        reply=None if row.get("reply") is None else str(row["reply"]),
        status=status,
        error=None if row.get("error") is None else str(row["error"]),
        input_tokens=_number(row.get("input_tokens")),
        output_tokens=_number(row.get("output_tokens")),
        latency_ms=_number(row.get("latency_ms")),
        passed=passed,
        score=score,
        graded=tuple(graded),
        passages=passages,
    )


def _passages(cell: object) -> list[dict[str, object]] | None:
    """A batch row's ``retrieved`` (JSON) as records; None for a template without knowledge."""
    if not isinstance(cell, str):
        return None
    found = json.loads(cell)
    return [p for p in found if isinstance(p, dict)] if isinstance(found, list) else None


def result_rows(result: EvalResult) -> list[dict[str, object]]:
    """One row per cell: the issue's columns, then each assertion's outcome, score and reason."""
    return [
        {
            "case": c.key.case,
            "message": c.message,
            "vars": json.dumps(c.values, ensure_ascii=False, default=str),
            "template": c.key.template,
            "model": c.key.model,
            "repeat": c.key.repeat,
            "reply": c.reply,
            "status": c.status,
            "error": c.error,
            "pass": c.passed,
            "score": c.score,
            "input_tokens": c.input_tokens,
            "output_tokens": c.output_tokens,
            "latency_ms": c.latency_ms,
            "retrieved": c.passages,
            "assertions": [
                {
                    "type": g.assertion.type,
                    "value": json.dumps(g.assertion.value, ensure_ascii=False),
                    "metric": g.assertion.metric,
                    "weight": g.assertion.weight,
                    "pass": g.outcome.passed,
                    "score": g.outcome.score,
                    "reason": g.outcome.reason,
                    "error": g.outcome.error,
                }
                for g in c.graded
            ],
        }
        for c in result.cells
    ]


async def write_results(result: EvalResult, output: Path) -> Path:
    path = output / RESULTS
    metadata = {"fmbot.eval": "1", "fmbot.threshold": str(result.threshold)}
    try:
        await asyncio.to_thread(table.write_records, path, result_rows(result), metadata)
    except OSError as exc:
        raise unwritable(path, exc) from exc
    return path


def failing_cells(previous: Path) -> set[tuple[int, str, str]]:
    """(case, template, model) of the cells that failed (in any repeat) in an earlier run."""
    path = previous / RESULTS
    if not path.is_file():
        raise ConfigError(
            "--filter-failing",
            str(previous),
            f"it has no {RESULTS}; give the --output of an earlier `fmbot eval run`",
        )
    rows = table.read_parquet(path).rows
    return {
        (int(str(r["case"])), str(r["template"]), str(r["model"])) for r in rows if not r["pass"]
    }

"""A whole evaluation: every case × template version × model (× repeat), graded.

Each template version × model × repeat is one batch job (:func:`bot.batch.job.run_job`) into
``DIR/runs/``, so an evaluation has the batch runner's resume, bounded concurrency and progress:
an interrupted run picks up where it stopped, and a job's file name holds the template's digest,
so an edited template runs again instead of resuming from its old replies.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bot.batch import table
from bot.batch.job import Progress, run_job, unwritable
from bot.batch.model import batch_settings, options_for
from bot.batch.runner import Runner
from bot.errors import ConfigError
from bot.eval.assertions import Assertion, Outcome, Reply, cell_score, check
from bot.eval.suite import LoadedSuite, Version, as_run
from bot.models.base import TextModel
from bot.models.registry import get_text_model

RESULTS = "results.parquet"
SUITE_AS_RUN = "suite.yaml"
#: Grades an llm-rubric assertion (the judge); None: the suite has none.
Judge = Callable[[Assertion, str, str], Awaitable[Outcome]]
#: Wraps a model (the cache) for one repeat: (model, repeat) -> model.
Wrap = Callable[[TextModel, int], TextModel]
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
class GradedAssertion:
    assertion: Assertion
    outcome: Outcome


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


def cached(home: Path) -> Wrap:
    """Models behind the reply cache under ``home`` (FMBOT_HOME)."""
    from bot.eval.cache import CachedModel

    directory = home.joinpath(*CACHE_DIR)
    # The first repeat shares its replies with runs without --repeat; later ones are new samples.
    return lambda model, repeat: CachedModel(model, directory, f"repeat {repeat}" if repeat else "")


def _slug(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("_")[:60] or "x"


def _job_name(index: int, version: Version, model: str, repeat: int) -> str:
    # The digests keep names apart that slug alike (yandex:m/latest, yandex:m?latest) and make
    # an edited template a new job rather than a resumed one.
    model_digest = hashlib.sha256(model.encode()).hexdigest()[:6]
    slug = f"{_slug(version.ref)}-{_slug(model)}"
    return f"{index}-{slug}-{version.digest}-{model_digest}-r{repeat}"


def _cell_value(value: object) -> object:
    # Cases go to the batch runner as JSONL, where a column must keep one type: variables
    # become text (templates convert them back to their types), like CSV cells.
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _write_cases(path: Path, rows: list[dict[str, object]]) -> None:
    text = "".join(
        json.dumps({k: _cell_value(v) for k, v in row.items()}, ensure_ascii=False) + "\n"
        for row in rows
    )
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


async def _grade(
    assertions: Iterable[Assertion], reply: Reply, message: str, judge: Judge | None
) -> list[GradedAssertion]:
    graded = []
    for assertion in assertions:
        if assertion.type != "llm-rubric":
            graded.append(GradedAssertion(assertion, check(assertion, reply)))
        elif judge is None:
            outcome = Outcome(False, 0.0, "no judge model to grade it", error=True)
            graded.append(GradedAssertion(assertion, outcome))
        else:
            graded.append(GradedAssertion(assertion, await judge(assertion, reply.text, message)))
    return graded


def _number(value: object) -> int | None:
    return None if value is None else int(str(value))


async def run_eval(
    loaded: LoadedSuite,
    output: Path,
    *,
    repeat: int = 1,
    concurrency: int = 4,
    progress: Progress | None = None,
    wrap: Wrap | None = None,
    only: set[tuple[int, str, str]] | None = None,
) -> EvalResult:
    """Run and grade the suite into ``output`` (a directory). ``only``: the (case, template,
    model) cells to run (``--filter-failing``); ``wrap``: the cache."""
    runs = output / "runs"
    try:
        runs.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(
            (output / SUITE_AS_RUN).write_text, as_run(loaded), encoding="utf-8"
        )
    except OSError as exc:
        raise unwritable(output, exc) from exc
    fixed = {k: str(_cell_value(v)) for k, v in loaded.suite.vars.items()}
    judge = await _judge(loaded, wrap)
    grading = asyncio.Semaphore(max(1, concurrency))
    result = EvalResult(threshold=loaded.suite.threshold, repeats=repeat)
    for index, version in enumerate(loaded.versions):
        for spec in loaded.models:
            chosen = [
                i
                for i in range(len(loaded.cases))
                if only is None or (i, version.ref, spec) in only
            ]
            if not chosen:
                continue
            settings = batch_settings(spec, False)
            model = await get_text_model(settings)
            for r in range(repeat):
                name = _job_name(index, version, spec, r)
                cases_path = runs / f"{name}.cases.jsonl"
                await asyncio.to_thread(
                    _write_cases, cases_path, [loaded.cases[i].values for i in chosen]
                )
                runner = Runner(
                    version.template,
                    wrap(model, r) if wrap else model,
                    options_for(settings, version.template),
                    fixed,
                )
                out = runs / f"{name}.parquet"
                await run_job(runner, cases_path, out, concurrency=concurrency, progress=progress)
                rows = (await asyncio.to_thread(table.read_parquet, out)).rows

                async def grade(i: int, row: dict[str, object], key: tuple[str, str, int]) -> Cell:
                    async with grading:  # judge calls in flight, like the cells' requests
                        return await _cell(loaded, CellKey(i, *key), row, judge)

                result.cells += await asyncio.gather(
                    *(
                        grade(i, row, (version.ref, spec, r))
                        for i, row in zip(chosen, rows, strict=True)
                    )
                )
    return result


async def _judge(loaded: LoadedSuite, wrap: Wrap | None) -> Judge | None:
    """The suite's judge (its model behind the cache too), when an assertion needs one."""
    from bot.eval.judge import RubricJudge

    if loaded.judge is None or loaded.judge_template is None:
        return None
    settings = batch_settings(loaded.judge, False)
    model = await get_text_model(settings)
    template = loaded.judge_template.template
    return RubricJudge(template, wrap(model, 0) if wrap else model, options_for(settings, template))


async def _cell(
    loaded: LoadedSuite, key: CellKey, row: dict[str, object], judge: Judge | None
) -> Cell:
    case = loaded.cases[key.case]
    message = str(case.values.get("message") or "")
    status = str(row.get("status"))
    graded: list[GradedAssertion] = []
    if status == "ok":
        reply = Reply(
            str(row.get("reply") or ""), _number(row["output_tokens"]), _number(row["latency_ms"])
        )
        graded = await _grade([*loaded.suite.assertions, *case.assertions], reply, message, judge)
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
    )


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

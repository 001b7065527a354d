"""A whole batch run: read the input, skip rows already done, run the rest, write Parquet.

Resuming: results come from the previous output file (a finished run) and from its progress file
(an interrupted one; newer, so it wins). A row is skipped when it has an ``ok`` result for the
same inputs (same fingerprint); failed rows and edited rows run again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bot.batch import table
from bot.batch.checkpoint import ProgressFile, RowResult, progress_path, read_progress
from bot.batch.model import model_identity
from bot.batch.runner import MESSAGE_COLUMN, Case, Runner, make_cases
from bot.errors import ConfigError

log = logging.getLogger(__name__)


class Progress(Protocol):
    """What a run reports to, e.g. a progress bar."""

    def start(self, total: int, done: int) -> None: ...

    def advance(self, result: RowResult) -> None: ...


class _Quiet:
    def start(self, total: int, done: int) -> None:
        pass

    def advance(self, result: RowResult) -> None:
        pass


@dataclass
class Summary:
    total: int = 0
    skipped: int = 0  # already done in an earlier run
    ran: int = 0
    ok: int = 0
    errors: int = 0
    first_errors: list[str] = field(default_factory=list)
    #: Failed rows that may succeed when run again (network, 429, 5xx, timeouts).
    retryable: int = 0
    #: Rows that failed on their own cells: running them again without a fix fails again.
    bad_input: list[int] = field(default_factory=list)


def _header(runner: Runner) -> dict[str, str]:
    return header_for(runner.template.name, runner.model.name)


def header_for(template: str, model_spec: str) -> dict[str, str]:
    """What a run's results belong to (the first line of its progress file)."""
    return {"template": template, "model": model_identity(model_spec)}


def _check_owner(found: Mapping[str, str], expected: Mapping[str, str], path: Path) -> None:
    for what in ("template", "model"):
        if what in found and found[what] != expected[what]:
            raise ConfigError(
                "--output",
                str(path),
                f"it holds results of {what} {found[what]!r}, not {expected[what]!r}; "
                "choose another --output, or delete it (and its .progress.jsonl) to start over",
            )


def still_to_run(
    cases: list[Case], previous: Mapping[int, RowResult]
) -> tuple[dict[int, RowResult], list[Case]]:
    """Rows an earlier run answered for the same input (kept, by row), and the cases to run."""
    results: dict[int, RowResult] = {}
    todo: list[Case] = []
    for case in cases:
        done = previous.get(case.row)
        if done is not None and done.status == "ok" and done.key == case.key:
            results[case.row] = done
        else:
            todo.append(case)
    return results, todo


def previous_results(output: Path, expected: Mapping[str, str]) -> dict[int, RowResult]:
    """Results of earlier runs into ``output``, by row. Blocking (called in a thread)."""
    results: dict[int, RowResult] = {}
    if output.exists():
        try:
            old = table.read_parquet(output)
        except Exception as exc:  # pyarrow raises many types for a damaged file
            raise ConfigError(
                "--output", str(output), f"exists but is not a readable Parquet file ({exc})"
            ) from None
        meta = {k.removeprefix("fmbot."): v for k, v in old.metadata.items()}
        if "keys" not in meta:  # never overwrite a file this command did not write
            raise ConfigError(
                "--output",
                str(output),
                "exists and was not written by `fmbot batch run`; choose another --output",
            )
        _check_owner(meta, expected, output)
        keys = json.loads(meta.get("keys", "[]"))
        for row, key in zip(old.rows, keys, strict=False):
            data = {**row, "key": key}
            if data.get("row") is not None and data.get("status") in ("ok", "error"):
                results[int(str(data["row"]))] = RowResult.from_json(data)
    header, progress = read_progress(progress_path(output))
    _check_owner(header, expected, progress_path(output))
    results.update({r.row: r for r in progress})
    return results


def check_columns(columns: list[str], path: Path) -> None:
    if MESSAGE_COLUMN not in columns:
        shown = ", ".join(columns) or "none"
        raise ConfigError(
            "--input",
            str(path),
            f"it has no {MESSAGE_COLUMN!r} column (columns: {shown}); add one with the user "
            "messages, or rename the column that holds them",
        )
    clash = [c for c in columns if c in table.RESULT_COLUMNS]
    if clash:
        raise ConfigError(
            "--input",
            str(path),
            f"its columns {', '.join(clash)} clash with the result columns; rename or drop them",
        )


async def run_job(
    runner: Runner,
    input_path: Path,
    output: Path,
    *,
    concurrency: int,
    progress: Progress | None = None,
) -> Summary:
    progress = progress or _Quiet()
    data = await asyncio.to_thread(table.read_input, input_path)
    check_columns(data.columns, input_path)
    expected = _header(runner)
    previous = await asyncio.to_thread(previous_results, output, expected)
    cases = make_cases(data.rows, runner.fixed)
    results, todo = still_to_run(cases, previous)

    summary = Summary(total=len(cases), skipped=len(results))
    progress.start(len(cases), len(results))
    if todo:
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            async with ProgressFile(progress_path(output), expected) as saved:

                async def record(result: RowResult) -> None:
                    await saved.append(result)  # durable before it counts as done
                    results[result.row] = result
                    summary.ran += 1
                    progress.advance(result)

                await runner.run(todo, concurrency, record)
        except OSError as exc:
            raise unwritable(output, exc) from exc

    await write_results(output, data, cases, results, expected, summary)
    return summary


async def write_results(
    output: Path,
    data: table.Table,
    cases: list[Case],
    results: Mapping[int, RowResult],
    expected: Mapping[str, str],
    summary: Summary,
) -> None:
    """Fill the summary's counts, write the output table, then drop the progress file."""
    ordered = [results[c.row] for c in cases]
    summary.ok = sum(r.status == "ok" for r in ordered)
    summary.errors = len(ordered) - summary.ok
    summary.first_errors = [f"row {r.row}: {r.error}" for r in ordered if r.error][:5]
    summary.retryable = sum(r.failure == "retry" for r in ordered)
    summary.bad_input = [r.row for r in ordered if r.failure == "input"]
    rows = [{**row, **_columns(result)} for row, result in zip(data.rows, ordered, strict=True)]
    metadata = {
        "fmbot.template": expected["template"],
        "fmbot.model": expected["model"],
        "fmbot.keys": json.dumps([r.key for r in ordered]),
    }
    try:
        await asyncio.to_thread(table.write_parquet, output, data.schema, rows, metadata)
    except OSError as exc:
        raise unwritable(output, exc) from exc
    # The Parquet file now holds everything the progress file did.
    progress_path(output).unlink(missing_ok=True)


def unwritable(output: Path, exc: OSError) -> ConfigError:
    return ConfigError(
        "--output",
        str(output),
        f"cannot write there ({exc.strerror or exc}); pick a writable folder with free space "
        "(finished rows are kept in its .progress.jsonl when that could be written)",
    )


def _columns(result: RowResult) -> dict[str, object]:
    return {
        "row": result.row,
        "reply": result.reply,
        "status": result.status,
        "error": result.error,
        "input_tokens": result.input_tokens,
        "output_tokens": result.output_tokens,
        "latency_ms": result.latency_ms,
        "retrieved": result.retrieved,
    }

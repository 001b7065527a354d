"""``fmbot batch``: run a table of cases through a template and a model; compare two runs."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bot.errors import ConfigError, FmbotError
from bot.text import terminal_safe

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress as RichProgress
    from rich.text import Text

    from bot.batch.checkpoint import RowResult
    from bot.batch.compare import Comparison, RunRow
    from bot.batch.job import Summary
    from bot.batch.yandex import TaskState
    from bot.prompts.template import PromptTemplate
    from bot.settings import Settings

MODES = ("sync", "stream", "async", "batch")

app = typer.Typer(
    help="Batch evaluation: run many cases through a template and a model, compare runs.",
    no_args_is_help=True,
    add_completion=False,
)


class RowsBar:
    """A rich progress bar on stderr (stdout stays for results)."""

    def __init__(self, progress: RichProgress, what: str = "rows") -> None:
        self._progress = progress
        self._what = what
        self._task = progress.add_task(what, total=None)
        self.errors = 0

    def start(self, total: int, done: int) -> None:
        # Shown only once the input and the output's earlier results have been checked, so a
        # configuration error is not printed under an empty bar.
        self._progress.update(self._task, total=total, completed=done)
        self._progress.start()

    def advance(self, result: RowResult) -> None:
        if result.status != "ok":
            self.errors += 1
            description = f"{self._what} ({self.errors} failed)"
            self._progress.update(self._task, description=description)
        self._progress.advance(self._task)


def _template(settings: Settings, name: str) -> PromptTemplate:
    from bot.prompts.library import PromptLibrary

    if not settings.prompts_dir.is_dir():
        raise ConfigError(
            "FMBOT_PROMPTS_DIR", str(settings.prompts_dir), "give a directory of template files"
        )
    return PromptLibrary(settings.prompts_dir).require(name, "--template")


@app.command()
def run(
    template: Annotated[str, typer.Option("--template", "-t", help="Template name.")],
    input_path: Annotated[
        Path,
        typer.Option(
            "--input", "-i", help="Cases: .jsonl, .csv or .parquet, with a 'message' column."
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Results file (.parquet).")],
    model: Annotated[
        str | None, typer.Option("--model", help="Model spec (default: FMBOT_TEXT_MODEL).")
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, max=256, help="Requests in flight.")
    ] = 4,
    var: Annotated[
        list[str] | None,
        typer.Option("--var", help="Template variable for every row: NAME=VALUE (repeatable)."),
    ] = None,
    use_async: Annotated[
        bool, typer.Option("--async", help="Yandex models: use the asynchronous operations API.")
    ] = False,
    mode: Annotated[
        str | None,
        typer.Option(
            "--mode",
            help="Yandex models: sync, stream, async, or batch (one Batch Inference task over "
            "a dataset: cheapest for large tables; needs pip install 'fmbot[batch]').",
        ),
    ] = None,
    no_wait: Annotated[
        bool,
        typer.Option("--no-wait", help="--mode batch: submit the task and return."),
    ] = False,
    keep_datasets: Annotated[
        bool,
        typer.Option("--keep-datasets", help="--mode batch: keep the request and result datasets."),
    ] = False,
) -> None:
    """Run every row through the template and model; write the results to --output.

    Other columns of the input fill template variables (empty cells use the defaults). Rows
    already done in an earlier run into the same --output are skipped, so an interrupted run
    resumes; failed rows are recorded and tried again on the next run.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from bot.batch.checkpoint import progress_path
    from bot.batch.job import run_job
    from bot.batch.model import batch_settings, options_for, with_mode
    from bot.batch.runner import Runner
    from bot.models.registry import close_models, get_text_model
    from bot.prompts.variables import coerce_variables, parse_assignments
    from bot.settings import load_settings

    if output.suffix != ".parquet":
        raise ConfigError("--output", str(output), "give a path ending in .parquet")
    if mode not in (None, *MODES):
        raise ConfigError("--mode", mode, f"use one of {', '.join(MODES)}")
    if mode == "batch":
        _run_batch_mode(
            template, input_path, output, model, var or [], wait=not no_wait, keep=keep_datasets
        )
        return
    if mode is not None:
        model = with_mode(model or load_settings().text_model, mode, "--mode")
    settings = batch_settings(model, use_async)
    chosen = _template(settings, template)
    try:
        fixed = parse_assignments(var or [])
        coerce_variables(chosen, fixed, known_only=True)  # fail now, not on every row
    except ValueError as exc:
        raise ConfigError("--var", " ".join(var or []), str(exc)) from None

    stderr = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )

    async def go() -> None:
        from bot.kb.embedders import create_embedder
        from bot.kb.retrieval import Retriever

        text_model = await get_text_model(settings)
        # A knowledge template's rows get their passages as a bot's turns do.
        retriever = (
            Retriever(settings.knowledge_dir, create_embedder(settings))
            if chosen.knowledge
            else None
        )
        try:
            options = options_for(settings, chosen)
            runner = Runner(chosen, text_model, options, fixed, retriever)
            bar = Progress(*columns, console=stderr)
            try:
                summary = await run_job(
                    runner, input_path, output, concurrency=concurrency, progress=RowsBar(bar)
                )
            finally:
                bar.stop()
        finally:
            if retriever is not None:
                await retriever.aclose()
            await close_models()
        typer.echo(
            f"{summary.total} row(s): {summary.ok} ok, {summary.errors} failed "
            f"({summary.skipped} already done, {summary.ran} run now) -> {output}"
        )
        for line in summary.first_errors:
            typer.echo(terminal_safe(f"  {line}"))  # errors may quote cells and server text
        for line in _advice(summary):
            typer.echo(line)

    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        typer.echo(
            f"Interrupted. Finished rows are saved in {progress_path(output)}; run the same "
            "command again to resume.",
            err=True,
        )
        raise typer.Exit(130) from None


def _advice(summary: Summary) -> list[str]:
    """What to do about failed rows: only failures of the way to the model are worth a retry."""
    lines = []
    if summary.retryable:
        lines.append(
            f"{summary.retryable} row(s) failed on the way to the model (network, rate limit, "
            "server error or timeout): run the same command again to retry them."
        )
    if summary.bad_input:
        rows = ", ".join(str(r) for r in summary.bad_input[:10])
        more = ", ..." if len(summary.bad_input) > 10 else ""
        lines.append(
            f"{len(summary.bad_input)} row(s) have input the template cannot use (rows {rows}"
            f"{more}; see the 'error' column): fix those cells, or the template, then run the "
            "same command again. Retrying them unchanged fails the same way."
        )
    other = summary.errors - summary.retryable - len(summary.bad_input)
    if other:
        lines.append(
            f"{other} row(s) were refused or failed otherwise (see the 'error' column): fix the "
            "cause, then run the same command again; rows already ok are not sent again."
        )
    return lines


def _clip(text: str | None, limit: int) -> str:
    # Replies, messages and errors come from models and tables: show control sequences, never
    # send them (rich passes ESC through).
    text = terminal_safe(text or "")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _reply(row: RunRow | None, limit: int) -> Text:
    from rich.text import Text

    if row is None:
        return Text("(no row)", style="dim")
    if row.status != "ok":
        return Text(_clip(row.error or row.status, limit), style="red")
    return Text(_clip(row.reply, limit))


def _both(a: object, b: object) -> str:
    return f"{'-' if a is None else a} / {'-' if b is None else b}"


def _print_comparison(console: Console, c: Comparison, limit: int, changed_only: bool) -> None:
    from rich.table import Table
    from rich.text import Text

    from bot.batch.compare import summary_lines

    table = Table(title=terminal_safe(f"A: {c.name_a}\nB: {c.name_b}"), show_lines=True)
    for name in ("row", "message", "reply A", "reply B", "status", "tokens", "latency ms"):
        table.add_column(name, overflow="fold")
    candidates = [p for p in c.pairs if p.changed or not changed_only]
    shown = candidates[:limit]
    for p in shown:
        a, b = p.a, p.b
        # Text objects, never markup strings: a reply containing "[red]" is shown as written.
        table.add_row(
            Text(str(p.row), style="bold" if p.changed else ""),
            Text(_clip(p.message, 200)),
            _reply(a, 400),
            _reply(b, 400),
            Text(_both(a and a.status, b and b.status)),
            Text(_both(a and a.tokens, b and b.tokens)),
            Text(_both(a and a.latency_ms, b and b.latency_ms)),
        )
    console.print(table)
    # Of the rows asked for: unchanged ones left out by --changed-only are not "more".
    hidden = len(candidates) - len(shown)
    if hidden:
        kind = " changed" if changed_only else ""
        console.print(Text(f"({hidden} more{kind} row(s) not shown; see --limit, --changed-only)"))
    for line in summary_lines(c):
        console.print(Text(line))


@app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(help="Results of run A (.parquet).")],
    run_b: Annotated[Path, typer.Argument(help="Results of run B (.parquet).")],
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write a static HTML page here.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=0, help="Rows to show in the table.")] = 50,
    changed_only: Annotated[
        bool, typer.Option("--changed-only", help="Show only rows whose reply or status differ.")
    ] = False,
) -> None:
    """Show two runs side by side, with a summary: rows changed, errors, latency, tokens."""
    from rich.console import Console

    from bot.batch.compare import compare_runs, to_html

    comparison = compare_runs(run_a, run_b)
    _print_comparison(Console(), comparison, limit, changed_only)
    if html is not None:
        html.write_text(to_html(comparison), encoding="utf-8")
        typer.echo(f"Wrote {html}")


class _BatchBar:
    """Progress of a batch task: batches done of the task's total, and its status."""

    def __init__(self, progress: RichProgress) -> None:
        self._progress = progress
        self._task = progress.add_task("batch task: submitting", total=None)
        self.errors = 0

    def start(self, total: int, done: int) -> None:
        pass  # shown once a task exists: an error before that is printed alone

    def advance(self, result: RowResult) -> None:
        if result.status != "ok":
            self.errors += 1

    def task(self, state: TaskState) -> None:
        self._progress.start()
        self._progress.update(
            self._task,
            description=f"batch task {state.task_id}: {state.status.lower()}",
            total=state.total_batches or None,
            completed=state.completed_batches,
        )


def _task_line(output: Path) -> str | None:
    """How to come back to the task recorded for ``output``, if any."""
    from bot.batch.batch_mode import pending_task
    from bot.batch.checkpoint import progress_path, read_task_notes

    pending, _ = pending_task(read_task_notes(progress_path(output)))
    if pending is None:
        return None
    return (
        f"The batch task {pending.task_id} keeps running on Yandex Cloud. Run the same command "
        f"again to collect its results (it re-attaches, nothing is sent twice); "
        f"`fmbot batch status {output}` shows where it stands, `fmbot batch cancel {output}` "
        "stops it."
    )


def _run_batch_mode(
    template: str,
    input_path: Path,
    output: Path,
    model: str | None,
    var: list[str],
    *,
    wait: bool,
    keep: bool,
) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from bot.batch.batch_mode import run_batch_mode
    from bot.batch.model import batch_settings, options_for
    from bot.batch.yandex import BatchClient
    from bot.prompts.variables import coerce_variables, parse_assignments

    settings = batch_settings(model, False)
    chosen = _template(settings, template)
    try:
        fixed = parse_assignments(var)
        coerce_variables(chosen, fixed, known_only=True)
    except ValueError as exc:
        raise ConfigError("--var", " ".join(var), str(exc)) from None
    stderr = Console(stderr=True)

    async def go() -> None:
        from bot.batch.batch_mode import model_uri
        from bot.kb.embedders import create_embedder
        from bot.kb.retrieval import Retriever

        model_uri(settings.text_model, "FOLDER")  # a yandex: model, before connecting
        retriever = (
            Retriever(settings.knowledge_dir, create_embedder(settings))
            if chosen.knowledge
            else None
        )
        async with contextlib.AsyncExitStack() as stack:
            client = await stack.enter_async_context(BatchClient.from_settings(settings))
            if retriever is not None:
                stack.push_async_callback(retriever.aclose)
            bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=stderr,
            )
            try:
                summary = await run_batch_mode(
                    client,
                    chosen,
                    settings.text_model,
                    options_for(settings, chosen),
                    fixed,
                    input_path,
                    output,
                    progress=_BatchBar(bar),
                    wait=wait,
                    keep_datasets=keep,
                    retriever=retriever,
                )
            finally:
                bar.stop()
        if summary.pending:
            what = "Submitted" if summary.submitted_now else "Still running (nothing sent again):"
            typer.echo(
                f"{what} batch task {summary.task_id}. Run the same command again to collect "
                f"its results; `fmbot batch status {output}` shows where it stands."
            )
            return
        typer.echo(
            f"{summary.total} row(s): {summary.ok} ok, {summary.errors} failed "
            f"({summary.skipped} already done, {summary.ran} run now) -> {output}"
        )
        for line in summary.first_errors:
            typer.echo(terminal_safe(f"  {line}"))
        if summary.nothing_submitted:
            # Exit non-zero (after writing the reasons) so a scheduled run notices no task ran.
            raise FmbotError(
                f"Nothing was submitted: all {summary.ran} row(s) left to run were refused "
                "before a batch task could start (rejected by Yandex Cloud's validation, or not "
                f"fitting the template; the reasons are in the 'error' column of {output}). "
                "Fix those rows or the template, then run the same command again."
            )
        for line in _advice(summary):
            typer.echo(line)
        if keep:
            typer.echo("Datasets kept (--keep-datasets).")

    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        typer.echo(
            f"Interrupted. {_task_line(output) or 'Run the same command again to resume.'}",
            err=True,
        )
        raise typer.Exit(130) from None
    except FmbotError as exc:
        # E.g. the credential expired while waiting: the task itself goes on.
        line = _task_line(output) if not isinstance(exc, ConfigError) else None
        if line is None:
            raise
        raise FmbotError(f"{exc} {line}") from None


def _recorded_task(output: Path) -> tuple[str, str]:
    from bot.batch.batch_mode import pending_task
    from bot.batch.checkpoint import progress_path, read_task_notes

    pending, _ = pending_task(read_task_notes(progress_path(output)))
    if pending is None:
        raise ConfigError(
            "OUTPUT",
            str(output),
            "no batch task is recorded for it (its .progress.jsonl names none still running)",
        )
    return pending.operation_id, pending.task_id


@app.command()
def status(
    output: Annotated[Path, typer.Argument(help="The --output of a `--mode batch` run.")],
) -> None:
    """Where the batch task of OUTPUT stands: status and batches done."""
    from bot.batch.model import batch_settings
    from bot.batch.yandex import BatchClient

    operation_id, task_id = _recorded_task(output)

    async def go() -> None:
        async with BatchClient.from_settings(batch_settings(None, False)) as client:
            state = await client.state(operation_id)
        typer.echo(
            f"batch task {task_id}: {state.status.lower()}, "
            f"{state.completed_batches}/{state.total_batches or '?'} batches"
            + (f" ({terminal_safe(state.error)})" if state.error else "")
        )

    asyncio.run(go())


@app.command()
def cancel(
    output: Annotated[Path, typer.Argument(help="The --output of a `--mode batch` run.")],
) -> None:
    """Cancel the batch task of OUTPUT (the next run collects what it finished)."""
    from bot.batch.model import batch_settings
    from bot.batch.yandex import BatchClient

    _, task_id = _recorded_task(output)

    async def go() -> None:
        async with BatchClient.from_settings(batch_settings(None, False)) as client:
            await client.cancel(task_id)
        typer.echo(f"Cancelled batch task {task_id}.")

    asyncio.run(go())

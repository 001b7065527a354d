"""``fmbot eval``: run a suite of cases through template versions × models and grade the
replies (a CI gate: exit 1 below the suite's threshold, 2 for a suite or configuration error)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from adapters.cli.batch import RowsBar
from bot.errors import ConfigError
from bot.text import terminal_safe

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgress

    from bot.eval.run import EvalResult
    from bot.eval.suite import LoadedSuite
    from bot.kb.index import Hit
    from bot.settings import Settings

SUITE_ERROR = 2

app = typer.Typer(
    help="Evaluate prompts: suites of cases with assertions, templates × models side by side.",
    no_args_is_help=True,
    add_completion=False,
)


def _load(path: Path, settings: Settings) -> LoadedSuite:
    """The suite, or every problem in it printed as path:line:column and exit 2."""
    from bot.eval.suite import load_suite

    loaded = load_suite(path, settings)
    if loaded.problems:
        for problem in loaded.problems:
            typer.echo(terminal_safe(str(problem)), err=True)
        typer.echo(
            f"{len(loaded.problems)} problem(s) in the suite {path}; fix them and run again "
            "(`fmbot eval check` lists them without running anything).",
            err=True,
        )
        raise typer.Exit(SUITE_ERROR)
    return loaded


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the example suite.")] = Path(
        "suite.yaml"
    ),
) -> None:
    """Write a commented example suite (never over an existing file)."""
    from bot.eval.run import example_suite

    if path.exists():
        typer.echo(f"{path} exists; give another path (nothing was written).", err=True)
        raise typer.Exit(SUITE_ERROR)
    path.write_text(example_suite(), encoding="utf-8")
    typer.echo(f"Wrote {path}. Edit it, then: fmbot eval run {path}")


@app.command()
def check(
    suite: Annotated[Path, typer.Argument(help="The suite file (YAML).")],
) -> None:
    """Check a suite without running it: every problem as path:line:column: message."""
    from bot.settings import load_settings

    loaded = _load(suite, load_settings())
    cells = len(loaded.cases) * len(loaded.versions) * len(loaded.models)
    typer.echo(
        f"OK: {len(loaded.cases)} case(s) × {len(loaded.versions)} template version(s) × "
        f"{len(loaded.models)} model(s) = {cells} cell(s)."
    )


class _Bar(RowsBar):
    """One bar over every cell of the run: each batch job adds its part."""

    def __init__(self, progress: RichProgress, total: int) -> None:
        super().__init__(progress, "cells")
        progress.update(self._task, total=total)

    def start(self, total: int, done: int) -> None:
        # A job resumed from an earlier run: its finished rows count as done.
        self._progress.advance(self._task, done)
        self._progress.start()


def _clip(text: str | None, limit: int) -> str:
    # Replies and reasons come from models and suites: shown, never obeyed by the terminal.
    text = terminal_safe(text or "").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _percent(value: float) -> str:
    return f"{value * 100:.0f}%"


def _print_report(result: EvalResult, failed_limit: int) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from bot.eval.report import matrix, metrics

    console = Console(highlight=False)
    table = Table(title="pass rate per template × model")
    columns = ["template", "model", "pass rate", "passed"]
    if result.repeats > 1:
        columns.append(f"pass^{result.repeats}")
    columns += ["score", "tokens in/out", "latency ms (mean)"]
    for name in columns:
        table.add_column(name, overflow="fold")
    for line in matrix(result):
        cells = [
            _clip(line.template, 60),
            _clip(line.model, 60),
            _percent(line.pass_rate),
            f"{line.passed}/{line.cells}",
        ]
        if result.repeats > 1:
            cells.append(f"{_percent(line.pass_every_time)} ({line.every_time}/{line.cases})")
        cells += [
            f"{line.score:.2f}",
            f"{line.input_tokens}/{line.output_tokens}",
            "-" if line.latency_ms is None else f"{line.latency_ms:.0f}",
        ]
        style = "red" if line.pass_rate < result.threshold else ""
        table.add_row(*(Text(c, style=style) for c in cells))
    console.print(table)
    metric_lines = metrics(result)
    if metric_lines:
        by_metric = Table(title="pass rate per metric")
        for name in ("template", "model", "metric", "pass rate", "passed"):
            by_metric.add_column(name, overflow="fold")
        for m in metric_lines:
            by_metric.add_row(
                *(
                    Text(c)
                    for c in (
                        _clip(m.template, 60),
                        _clip(m.model, 60),
                        _clip(m.metric, 40),
                        _percent(m.pass_rate),
                        f"{m.passed}/{m.checked}",
                    )
                )
            )
        console.print(by_metric)
    failed = [c for c in result.cells if not c.passed]
    if failed:
        console.print(Text(f"Failed cells ({len(failed)}):"))
    for c in failed[:failed_limit]:
        repeat = f" repeat {c.key.repeat + 1}" if result.repeats > 1 else ""
        head = f"- case {c.key.case} ({_clip(c.message, 60)}) × {c.key.template} × {c.key.model}"
        console.print(Text(_clip(head + repeat, 200)))
        console.print(Text(f"    reply: {_clip(c.reply or '', 160)}"))
        for reason in c.failures():
            console.print(Text(f"    {_clip(reason, 200)}"))
    if len(failed) > failed_limit:
        console.print(Text(f"({len(failed) - failed_limit} more failed cell(s) in the results)"))


@app.command()
def run(
    suite: Annotated[Path, typer.Argument(help="The suite file (YAML).")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Results directory (default: SUITE's name + .eval)."),
    ] = None,
    repeat: Annotated[
        int, typer.Option("--repeat", min=1, max=100, help="Run each cell N times (pass^N).")
    ] = 1,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Send every request, reuse no cached reply.")
    ] = False,
    filter_failing: Annotated[
        Path | None,
        typer.Option("--filter-failing", help="Run only the cells that failed in that run."),
    ] = None,
    junit: Annotated[
        Path | None, typer.Option("--junit", help="Also write JUnit XML here (for CI).")
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, max=256, help="Requests in flight.")
    ] = 4,
    show_failed: Annotated[
        int, typer.Option("--show-failed", min=0, help="Failed cells to print.")
    ] = 20,
    mode: Annotated[
        str | None,
        typer.Option(
            "--mode",
            help="batch: each template × model × repeat as one Yandex Batch Inference task "
            "(yandex: models only).",
        ),
    ] = None,
) -> None:
    """Run every case × template × model, grade the replies, print the matrix.

    Exit status: 0 when every template × model pass rate reaches the suite's threshold, 1 when
    any is below it, 2 for a suite or configuration error. Results go to DIR/results.parquet
    and the suite as run (with every template's source) to DIR/suite.yaml; running again into
    the same DIR resumes.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from bot.eval.report import below_threshold, junit_xml
    from bot.eval.run import cache_dir, failing_cells, run_eval, write_results
    from bot.models.registry import close_models
    from bot.settings import load_settings

    settings = load_settings()
    loaded = _load(suite, settings)
    if mode is not None:
        _check_batch_mode(mode, loaded.models)
    target = output or suite.with_name(suite.stem + ".eval")
    only = failing_cells(filter_failing) if filter_failing is not None else None
    cells = repeat * sum(
        only is None or (i, v.ref, m) in only
        for i in range(len(loaded.cases))
        for v in loaded.versions
        for m in loaded.models
    )
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=Console(stderr=True),
    )

    async def go() -> EvalResult:
        async with contextlib.AsyncExitStack() as stack:
            batch = None
            if mode == "batch":
                from bot.batch.model import batch_settings
                from bot.batch.yandex import BatchClient

                client = BatchClient.from_settings(batch_settings(loaded.models[0], False))
                batch = await stack.enter_async_context(client)
            try:
                result = await run_eval(
                    loaded,
                    target,
                    settings,
                    repeat=repeat,
                    concurrency=concurrency,
                    progress=_Bar(bar, cells),
                    cache=None if no_cache else cache_dir(settings.home),
                    only=only,
                    batch=batch,
                )
            finally:
                bar.stop()
                await close_models()
        await write_results(result, target)
        return result

    try:
        result = asyncio.run(go())
    except KeyboardInterrupt:
        running = " Batch tasks keep running on Yandex Cloud;" if mode == "batch" else ""
        typer.echo(
            f"Interrupted.{running} Finished cells are saved under {target}; run the same "
            "command again to resume.",
            err=True,
        )
        raise typer.Exit(130) from None
    _print_report(result, show_failed)
    if junit is not None:
        try:
            junit.write_bytes(junit_xml(result, loaded.suite.description or str(suite)))
        except OSError as exc:
            raise ConfigError("--junit", str(junit), f"cannot write it ({exc.strerror})") from None
    low = below_threshold(result)
    typer.echo(f"Results: {target / 'results.parquet'}")
    if not result.cells:
        typer.echo("No cells were run (--filter-failing found no failed cell).")
    if low:
        typer.echo(
            f"FAILED: {len(low)} template × model pass rate(s) below the threshold "
            f"{_percent(result.threshold)}."
        )
        raise typer.Exit(1)
    typer.echo(f"PASSED: every pass rate is at least the threshold {_percent(result.threshold)}.")


def _check_batch_mode(mode: str, models: list[str]) -> None:
    """``--mode batch`` runs only on Yandex's Batch Inference: one line and exit 2 otherwise."""
    if mode != "batch":
        raise ConfigError("--mode", mode, "use --mode batch, or leave --mode out")
    other = [spec for spec in models if not spec.startswith("yandex:")]
    if other:
        raise ConfigError(
            "--mode",
            mode,
            f"batch mode needs yandex: models, and the suite runs {', '.join(other)}; run it "
            "without --mode, or put the yandex: models in a suite of their own",
        )


@app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(help="Results directory of run A.")],
    run_b: Annotated[Path, typer.Argument(help="Results directory of run B.")],
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write a static HTML page here.")
    ] = None,
) -> None:
    """Two runs side by side: pass-rate change per template × model, cells that flipped."""
    from rich.console import Console
    from rich.text import Text

    from bot.eval.compare import compare_dirs, to_html

    comparison = compare_dirs(run_a, run_b)
    console = Console(highlight=False)
    for line in comparison.summary():
        console.print(Text(_clip(line, 300)))
    for flip in comparison.flips:
        before = "-" if flip.before is None else ("pass" if flip.before else "fail")
        after = "-" if flip.after is None else ("pass" if flip.after else "fail")
        repeat = f" repeat {flip.repeat + 1}" if flip.repeat else ""
        head = (
            f"{before} → {after}: case {flip.case} ({_clip(flip.message, 60)}) × "
            f"{flip.template} × {flip.model}{repeat}"
        )
        console.print(Text(_clip(head, 300)))
        if flip.reasons:
            console.print(Text(f"    {_clip(flip.reasons, 300)}"))
    if html is not None:
        try:
            html.write_text(to_html(comparison), encoding="utf-8")
        except OSError as exc:
            raise ConfigError("--html", str(html), f"cannot write it ({exc.strerror})") from None
        typer.echo(f"Wrote {html}")


@app.command()
def replay(
    chat: Annotated[str, typer.Argument(help="The conversation (see `fmbot history`).")],
    template: Annotated[
        str, typer.Option("--template", "-t", help="Template name or file to run the turn with.")
    ],
    turn: Annotated[
        int | None, typer.Option("--turn", min=1, help="Which user turn, from 1 (default: last).")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Model spec (default: FMBOT_TEXT_MODEL).")
    ] = None,
    add_to: Annotated[
        Path | None, typer.Option("--add-to", help="Append the turn to this suite as a case.")
    ] = None,
) -> None:
    """Run one stored turn again with another template version; show both replies."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from bot.app import open_configured_store
    from bot.batch.model import batch_settings, options_for
    from bot.dialog import passages_of
    from bot.eval.replay import append_case, replay, stored_turn, turn_passages
    from bot.eval.suite import resolve_version
    from bot.kb.embedders import create_embedder
    from bot.kb.retrieval import Retriever
    from bot.models.registry import close_models, get_text_model
    from bot.prompts.library import PromptLibrary
    from bot.prompts.variables import coerce_variables

    settings = batch_settings(model, False)
    library = PromptLibrary(settings.prompts_dir) if settings.prompts_dir.is_dir() else None
    version, problems = resolve_version(template, Path.cwd(), library, "--template")
    if version is None:
        for problem in problems:
            typer.echo(terminal_safe(str(problem)), err=True)
        raise typer.Exit(SUITE_ERROR)
    chosen = version.template

    async def go() -> None:
        store = await open_configured_store(settings)
        try:
            stored = await stored_turn(store, chat, turn, settings.history_messages)
        finally:
            await store.aclose()
        hits: tuple[Hit, ...] = ()
        note = ""
        if chosen.knowledge:  # the turn's own passages where the store kept them
            retriever = Retriever(settings.knowledge_dir, create_embedder(settings))
            try:
                hits, note = await turn_passages(retriever, chosen, stored)
            finally:
                await retriever.aclose()
        try:
            text_model = await get_text_model(settings)
            defaults = coerce_variables(chosen, {}, known_only=True)
            options = options_for(settings, chosen)
            done = await replay(stored, chosen, text_model, options, defaults, hits)
        finally:
            await close_models()
        table = Table(
            title=terminal_safe(
                f"chat {chat}, turn {stored.number} ({len(stored.history)} message(s) of "
                "history, not trimmed to the context window)"
            ),
            show_lines=True,
        )
        table.add_column("message", overflow="fold")
        table.add_column(f"stored reply ({stored.stored_template or 'template unknown'})")
        table.add_column(f"new reply ({version.ref} × {settings.text_model})", overflow="fold")
        new = (
            Text(terminal_safe(done.reply or ""))
            if done.error is None
            else Text(terminal_safe(f"error: {done.error}"), style="red")
        )
        table.add_row(
            Text(terminal_safe(stored.message)),
            Text(terminal_safe(stored.stored_reply or "(none stored)")),
            new,
        )
        console = Console(highlight=False)
        console.print(table)
        if note:
            console.print(Text(terminal_safe(note)))
            for p in passages_of(hits):
                console.print(Text(terminal_safe(f"  [{p.n}] {p.label}")))
        if add_to is not None:
            append_case(add_to, stored.message)
            typer.echo(f"Added the turn to {add_to} as a case; `fmbot eval check {add_to}`.")

    asyncio.run(go())

"""``fmbot eval``: run a suite of cases through template versions × models and grade the
replies (a CI gate: exit 1 below the suite's threshold, 2 for a suite or configuration error)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bot.text import terminal_safe

if TYPE_CHECKING:
    from bot.eval.suite import LoadedSuite
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

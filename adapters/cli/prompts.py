"""``fmbot prompts``: list, check and render prompt templates without starting a bot."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bot.errors import ConfigError
from bot.events import Message
from bot.settings import Settings, load_settings
from bot.text import terminal_safe

if TYPE_CHECKING:
    from bot.kb.index import Hit
    from bot.prompts.template import PromptTemplate

_JSON_UNSAFE = re.compile("[\x7f-\x9f]")

app = typer.Typer(
    help="Work with prompt templates: list them, check them, see what a model would be sent.",
    no_args_is_help=True,
    add_completion=False,
)


def prompt_settings() -> Settings:
    """Settings for commands that never call a model.

    The model settings are replaced by the local default so that a remote model without
    credentials at hand does not stop anyone from checking templates; everything else (prompts
    directory, store) is validated as usual.
    """
    default_model = Settings.model_fields["text_model"].default
    return load_settings(FMBOT_TEXT_MODEL=default_model, FMBOT_IMAGE_MODEL=None)


@app.command("list")
def list_templates() -> None:
    """List the templates in FMBOT_PROMPTS_DIR: name, description, file."""
    from bot.prompts.loader import check_directory

    settings = prompt_settings()
    report = check_directory(settings.prompts_dir)
    templates = sorted(report.templates, key=lambda t: t.name)
    width = max((len(t.name) for t in templates), default=0)
    for t in templates:
        line = f"{t.name.ljust(width)}  {t.description or '-'}  ({t.source})"
        typer.echo(terminal_safe(line))
    if not templates:
        typer.echo(f"No valid templates in {settings.prompts_dir}.", err=True)
    bad = {str(p.location).rsplit(":", 2)[0] for p in report.problems if p.location}
    if report.problems:
        typer.echo(
            f"{len(bad) or 1} file(s) have problems and are not listed; "
            "run `fmbot prompts check` to see them.",
            err=True,
        )


@app.command()
def check(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Template files or directories (default: FMBOT_PROMPTS_DIR)."),
    ] = None,
) -> None:
    """Check every template file; list every problem as path:line:column: message.

    Exits 1 when any file has a problem, 0 otherwise.
    """
    from bot.prompts.loader import check_paths

    targets = list(paths) if paths else [prompt_settings().prompts_dir]
    report = check_paths(targets)  # a missing path is one of the problems, the rest are checked
    for problem in report.problems:
        typer.echo(terminal_safe(str(problem)))
    where = ", ".join(str(t) for t in targets)
    if not report.files:
        typer.echo(f"No template files (*.yaml, *.yml, *.md) in {where}.")
        raise typer.Exit(1)
    if report.problems:
        failed = len({str(p.location).rsplit(":", 2)[0] for p in report.problems})
        typer.echo(
            f"{len(report.problems)} problem(s) in {failed} of {len(report.files)} file(s). "
            "Fix them and run `fmbot prompts check` again; running bots keep serving the last "
            "good version of each file meanwhile."
        )
        raise typer.Exit(1)
    typer.echo(f"OK: {len(report.templates)} template(s) in {where}.")
    _knowledge_notes(report.templates)


def _knowledge_notes(templates: list[PromptTemplate]) -> None:
    """Knowledge bases the templates name that are not built (yet): a note, not a problem, as
    templates are often checked where no knowledge base is (CI)."""
    from bot.kb.index import kb_file

    directory = prompt_settings().knowledge_dir
    for template in templates:
        for name in template.knowledge:
            if not kb_file(directory, name).is_file():
                typer.echo(
                    terminal_safe(
                        f"note: {template.source or template.name} uses knowledge base {name!r}, "
                        f"not built in {directory}; build it with: fmbot kb add {name} PATH..."
                    )
                )


async def _history(settings: Settings, chat: str) -> list[Message]:
    """The turns a running bot would read for ``chat`` (same store, limits and expiry)."""
    from bot.app import open_configured_store

    store = await open_configured_store(settings)
    try:
        turns = await store.read(chat, last=settings.history_messages)
    finally:
        await store.aclose()
    return [Message(t.role, t.text) for t in turns]


async def _retrieve(settings: Settings, template: PromptTemplate, message: str) -> list[Hit]:
    """The passages a turn would get (FMBOT_EMBED_MODEL, FMBOT_KB_DIR)."""
    from bot.kb.embedders import create_embedder
    from bot.kb.retrieval import Retriever

    retriever = Retriever(settings.knowledge_dir, create_embedder(settings))
    try:
        return await retriever.search(
            template.knowledge,
            message,
            template.knowledge_top_k,
            template.knowledge_min_score,
        )
    finally:
        await retriever.aclose()


@app.command()
def render(
    name: Annotated[str, typer.Argument(help="Template name (see `fmbot prompts list`).")],
    message: Annotated[str, typer.Option("--message", "-m", help="The user's message.")],
    var: Annotated[
        list[str] | None,
        typer.Option("--var", help="Set a template variable: NAME=VALUE (repeatable)."),
    ] = None,
    history: Annotated[
        str | None,
        typer.Option("--history", help="Include this conversation's stored turns (FMBOT_STORE)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the messages as a JSON list.")
    ] = False,
) -> None:
    """Print the exact messages a model would be sent for MESSAGE, in order."""
    from bot.dialog import passages_of
    from bot.prompts.library import PromptLibrary
    from bot.prompts.render import Passage, build_messages, knowledge_placement
    from bot.prompts.variables import coerce_variables, parse_assignments

    settings = prompt_settings()
    template = PromptLibrary(settings.prompts_dir).require(name, "NAME")
    try:
        variables = coerce_variables(template, parse_assignments(var or []), known_only=True)
    except ValueError as exc:
        raise ConfigError("--var", " ".join(var or []), str(exc)) from None

    notes: list[str] = []
    past: list[Message] = []
    if history is not None:
        past = asyncio.run(_history(settings, history))
        # Trimming to the context window needs the model's own tokenizer (loading the model);
        # this command stays model-free, so it says what it did instead.
        notes.append(
            f"history: {len(past)} stored message(s) of chat {history!r} (the last "
            f"{settings.history_messages} at most), NOT trimmed to the model's context window; "
            "a running bot drops the oldest pairs that do not fit"
        )
    passages: list[Passage] = []
    # Where passages go depends on the model a bot would use (prompt_settings replaced it).
    stable = Settings().text_model.startswith("local:")
    if template.knowledge:
        passages = passages_of(asyncio.run(_retrieve(settings, template, message)))
        notes.append(
            f"knowledge: {len(passages)} passage(s) from {', '.join(template.knowledge)} for "
            f"this message, {knowledge_placement(template, stable)}"
            + (
                " (not in the instruction: the local model keeps its cached prompt prefix)"
                if knowledge_placement(template, False) != knowledge_placement(template, stable)
                else ""
            )
        )
    messages = build_messages(
        template, message, past, variables, knowledge=passages, stable_prefix=stable
    )
    if as_json:
        for note in notes:
            typer.echo(f"note: {note}", err=True)
        rows = [{"role": m.role, "text": m.text} for m in messages]
        typer.echo(json_safe(json.dumps(rows, ensure_ascii=False, indent=2)))
        return
    blocks = [f"# {note}" for note in notes]
    blocks += [f"[{i}] {m.role}\n{m.text}" for i, m in enumerate(messages, 1)]
    # Templates, stored turns and the message may hold ESC sequences: show them, do not obey.
    typer.echo(terminal_safe("\n\n".join(blocks)))


def json_safe(text: str) -> str:
    """JSON escapes C0 controls itself; DEL and C1 (0x9B is a one-byte CSI) get ``\\u``
    escapes too, so the output stays the exact data and is still safe on a terminal."""
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m[0]):04x}", text)

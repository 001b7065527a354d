"""The ``fmbot`` command line. Configuration errors print one line and exit 2, no traceback."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from datetime import datetime
from enum import StrEnum
from importlib import metadata
from typing import Annotated, Any, Literal, NoReturn, TypeVar

import typer
from pydantic import BaseModel

from adapters.cli import batch, evals, kb, prompts
from bot.errors import ConfigError, FmbotError
from bot.observe import logs
from bot.settings import Settings, load_settings, log_settings
from bot.text import terminal_safe

app = typer.Typer(
    help="fmbot — chatbots on generative foundation models, with dialog state.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(prompts.app, name="prompts")
app.add_typer(batch.app, name="batch")
app.add_typer(evals.app, name="eval")
app.add_typer(kb.app, name="kb")

T = TypeVar("T")
MAX_CHAT_NAME = 200


def _version() -> str:
    return f"fmbot {metadata.version('fmbot')}"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(_version())
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """fmbot — chatbots on generative foundation models, with dialog state."""


@app.command()
def console(
    chat: Annotated[
        str, typer.Option(help="Conversation to open or resume.", callback=_chat_name)
    ] = "console",
    mode: Annotated[
        str | None, typer.Option(help="Switch the conversation to this template first.")
    ] = None,
) -> None:
    """Chat in the terminal (reads one message per line when stdin is not a terminal)."""
    from adapters.console import ConsoleChannel
    from bot.app import build_manager
    from bot.models.registry import close_models
    from bot.observe.server import serving

    async def go(settings: Settings) -> None:
        # What goes wrong in a turn is told in the chat (a notice); the log line about it would
        # repeat it on the terminal, so the console logs to a file.
        settings.home.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(settings.home / "console.log", encoding="utf-8")
        logs.log_to(handler, settings.log_format, logs.secret_values(settings))
        manager = await build_manager(settings)
        try:
            if mode:
                if manager.prompts.mode(mode) is None:
                    names = ", ".join(t.name for t in manager.prompts.modes())
                    raise ConfigError("--mode", mode, f"use one of: {names}")
                await manager.store.set_state(chat, mode=mode)
            # Traces with OTEL_EXPORTER_OTLP_ENDPOINT (to try a collector out); no metrics port.
            async with serving(None, "console"):
                await ConsoleChannel(manager, chat, settings.home).run(sys.stdin.isatty())
        finally:
            await manager.aclose()
            await close_models()

    _run(go)


def _one_line(name: str) -> str:
    """A chat name as one line of a listing, whatever it holds."""
    return terminal_safe(name).replace("\n", "^J").replace("\t", "^I")


def _chat_name(name: str) -> str:
    """``--chat``: a name that can be listed, printed and typed again."""
    if not name.strip() or terminal_safe(name) != name or "\n" in name or "\t" in name:
        raise typer.BadParameter("give a non-empty name on one line, without control characters")
    if len(name) > MAX_CHAT_NAME:
        raise typer.BadParameter(f"at most {MAX_CHAT_NAME} characters")
    return name


@app.command()
def history(
    name: Annotated[str | None, typer.Argument(help="Conversation to print.")] = None,
) -> None:
    """Print a conversation's stored turns, or list conversations when no NAME is given."""
    from bot.app import open_configured_store

    async def go(settings: Settings) -> None:
        store = await open_configured_store(settings)
        try:
            if name is None:
                chats = await store.chats()
                if not chats:
                    typer.echo("No conversations yet. Start one with: fmbot console")
                for info in chats:
                    when = datetime.fromtimestamp(info.updated_at).strftime("%Y-%m-%d %H:%M")
                    typer.echo(f"{_one_line(info.chat)}\t{info.turns} messages\t{when}")
                return
            turns = await store.read(name)
            if not turns:
                raise FmbotError(
                    f"no conversation named {_one_line(name)!r}: `fmbot history` lists them"
                )
            for turn in turns:
                status = turn.meta.get("status")
                mark = f" ({status})" if status not in (None, "complete") else ""
                # Continuation lines are indented so each turn starts on an unindented line.
                text = terminal_safe(turn.text).replace("\n", "\n  ")
                if pictures := turn.meta.get("pictures"):
                    count = len(pictures) if isinstance(pictures, list) else 1
                    text = ("[picture] " if count == 1 else f"[{count} pictures] ") + text
                typer.echo(f"{turn.role}{mark}: {text}")
        finally:
            await store.aclose()

    _run(go)


@app.command()
def config() -> None:
    """Print the effective settings (secrets masked)."""
    settings = load_settings()
    for key, value in settings.public_view().items():
        typer.echo(f"{key}={'' if value is None else value}")


class Role(StrEnum):
    """``fmbot telegram --role``: see adapters/telegram/roles.py."""

    ALL = "all"
    INGRESS = "ingress"
    WORKER = "worker"


@app.command()
def telegram(
    webhook: Annotated[
        str | None,
        typer.Option(help="Public https:// URL for Telegram to POST updates to (webhook mode)."),
    ] = None,
    listen: Annotated[
        str, typer.Option(help="HOST:PORT the webhook server listens on.")
    ] = "0.0.0.0:8080",
    role: Annotated[
        Role,
        typer.Option(
            help="all: one process. ingress: queue updates in Redis. worker: answer queued ones."
        ),
    ] = Role.ALL,
) -> None:
    """Run the Telegram bot: long polling, or a webhook server with --webhook URL."""
    from adapters.telegram import load_telegram_settings, run_telegram

    tg = load_telegram_settings()  # a missing token is reported before anything starts
    if role is Role.ALL:
        _serve(lambda settings: run_telegram(settings, tg, webhook=webhook, listen=listen), tg)
        return
    from adapters.telegram.roles import run_role

    split: Literal["ingress", "worker"] = "ingress" if role is Role.INGRESS else "worker"
    _serve(lambda settings: run_role(split, settings, tg, webhook=webhook, listen=listen), tg)


@app.command()
def web(
    listen: Annotated[
        str, typer.Option(help="HOST:PORT to serve on; beyond loopback it needs FMBOT_WEB_TOKEN.")
    ] = "127.0.0.1:8000",
) -> None:
    """Serve the chat page, the prompt playground and the JSON API (see README "Web")."""
    from adapters.web.server import run_web
    from adapters.web.settings import load_web_settings, parse_listen

    host, port = parse_listen(listen)
    web_settings = load_web_settings(host)  # a missing token is reported before anything starts
    _serve(lambda settings: run_web(settings, web_settings, host, port), web_settings)


@app.command()
def bench(
    chats: Annotated[int, typer.Option(min=1, help="Chats sending at once.")] = 1000,
    turns: Annotated[
        int, typer.Option(min=1, help="Turns in total, spread over the chats.")
    ] = 20000,
    redis: Annotated[
        str | None,
        typer.Option(help="Redis URL (default: FMBOT_STORE when it is redis://, else local)."),
    ] = None,
    partitions: Annotated[int, typer.Option(min=1, help="Queue partitions.")] = 16,
    concurrency: Annotated[
        int,
        typer.Option(
            min=1, help="Best case: turns the worker runs at once (the model is instant)."
        ),
    ] = 8,
    many_chats: Annotated[
        int,
        typer.Option(min=0, help="Chats of the many-chats run (two turns or more each); 0: skip."),
    ] = 20000,
    rate: Annotated[
        float,
        typer.Option(min=0, help="Live run: messages/s sent while the worker runs; 0: skip."),
    ] = 500,
    live_seconds: Annotated[
        float, typer.Option(min=0.1, help="Live run: how long messages are sent.")
    ] = 10,
    queue: Annotated[
        bool, typer.Option(help="Through the Redis queue and a worker, or the manager directly.")
    ] = True,
    toggle_ms: Annotated[
        float,
        typer.Option(
            min=1,
            help="What metrics cost in one run: they are switched on and off this often (ms) "
            "while its clock runs.",
        ),
    ] = 50,
    cost_rounds: Annotated[
        int,
        typer.Option(
            min=0,
            help="What metrics cost, also over whole runs: best-case runs without and with "
            "metrics, alternated (A B, B A, ...), this many pairs; 0: skip.",
        ),
    ] = 0,
    cost_turns: Annotated[
        int, typer.Option(min=1, help="Turns of each of those runs (at most --turns).")
    ] = 2000,
    profile: Annotated[bool, typer.Option(help="Print the top functions by own time.")] = False,
    model: Annotated[
        str | None,
        typer.Option(
            help="local:smollm2: benchmark the embedded model against raw llama.cpp instead "
            "(decode speed, first token early and past the window, one and two chats)."
        ),
    ] = None,
    window: Annotated[int, typer.Option(min=256, help="With --model: context window.")] = 4096,
    words: Annotated[int, typer.Option(min=1, help="With --model: words per message.")] = 100,
) -> None:
    """Benchmark the dialog manager and the Redis queue with the instant echo model: the best
    case, many chats, the real worker concurrency and a live run (see README)."""
    from adapters.cli.bench import (
        BenchResult,
        Run,
        plan_runs,
        profiled,
        report,
        run_benches,
        run_cost_rounds,
    )
    from adapters.cli.bench_cost import CostRounds
    from bot.runtime import run_server

    settings = load_settings()
    if model is not None:
        if model != "local:smollm2":
            raise ConfigError("--model", model, "the benchmark runs local:smollm2")
        from adapters.cli.bench_local import run_local_bench

        local = run_server(
            run_local_bench(
                model,
                None,
                window=window,
                threads=settings.local_threads,
                turns=40 if turns == 20000 else turns,
                words=words,
            )
        )
        typer.echo(local.report())
        return
    url = redis or (
        settings.store_url
        if settings.store_url.startswith(("redis://", "rediss://"))
        else "redis://127.0.0.1:6379/0"
    )

    runs = plan_runs(
        chats=chats,
        turns=turns,
        concurrency=concurrency,
        many_chats=many_chats,
        rate=rate,
        live_seconds=live_seconds,
        toggle=toggle_ms / 1000,
    )

    cost_run = Run("best case", chats, min(turns, cost_turns), concurrency)

    async def benches() -> tuple[list[BenchResult], CostRounds | None]:
        results = await run_benches(settings, url, runs, partitions=partitions, queue=queue)
        cost = None
        if cost_rounds:
            cost = await run_cost_rounds(
                settings, url, cost_run, cost_rounds, partitions=partitions, queue=queue
            )
        return results, cost

    if profile:
        (results, cost), stats = profiled(benches)
        typer.echo(stats, err=True)
    else:
        results, cost = run_server(benches())
    typer.echo(report(results, url, cost))


@app.command()
def version() -> None:
    """Print fmbot's version."""
    typer.echo(_version())


def _run(make: Callable[[Settings], Coroutine[Any, Any, T]]) -> T:
    settings = load_settings()
    return asyncio.run(make(settings))


def _serve(make: Callable[[Settings], Coroutine[Any, Any, T]], *more: BaseModel) -> T:
    """As _run, on uvloop when installed: for the long-running server roles. Logging follows
    the settings (FMBOT_LOG_FORMAT, FMBOT_LOG_LEVEL), masking the secrets of these and ``more``
    (the channel's settings)."""
    from bot.runtime import run_server

    settings = load_settings()
    logs.configure(
        settings.log_format, settings.log_level, secrets=logs.secret_values(settings, *more)
    )
    return run_server(make(settings))


#: What an option's value is, in --help (typer would print ``<str>``, ``<int range>``).
METAVARS = {
    "chat": "NAME",
    "mode": "TEMPLATE",
    "template": "TEMPLATE",
    "name": "NAME",
    "webhook": "URL",
    "redis": "URL",
    "listen": "HOST:PORT",
    "model": "SPEC",
    "var": "NAME=VALUE",
    "message": "TEXT",
    "history": "FILE",
    "suite": "SUITE",
    "add_to": "SUITE",
    "filter_failing": "DIR",
    "junit": "FILE",
}


def _readable_metavars(command: Any) -> None:
    """``--chat NAME``, ``--turns N``, ``--output PATH``; flags show no value at all."""
    ctx = typer.Context(command)
    help_option = command.get_help_option(ctx)
    for param in [*command.params, *([help_option] if help_option else [])]:
        if getattr(param, "is_flag", False):
            param.metavar = ""
        elif param.metavar is None:
            shown = param.display_type(ctx) or ""
            if param.name in METAVARS:
                param.metavar = METAVARS[param.name]
            elif "int" in shown:
                param.metavar = "N"
            elif "path" in shown.lower():
                param.metavar = "PATH"
            elif "|" in shown:  # choices
                param.metavar = shown.strip("<>")
            else:
                param.metavar = (param.name or "value").upper()
    for param in command.params:
        if param.param_type_name == "argument":
            # An argument's name is its metavar already (PATH...); typer would add ``<str>``.
            param.display_type_rich = lambda ctx: None
    for sub in getattr(command, "commands", {}).values():
        _readable_metavars(sub)


def _fail(message: str, code: int) -> NoReturn:
    """One line on stderr and exit ``code``; with FMBOT_LOG_FORMAT=json, a JSON log line."""
    if logs.current_format() == "json":
        logging.getLogger("fmbot").error(message)
    else:
        typer.echo(f"fmbot: {terminal_safe(message)}", err=True)
    sys.exit(code)


def main() -> None:
    # Before the settings, whose errors are log lines too (json), from where they are read.
    logs.configure(*log_settings())
    command = typer.main.get_command(app)
    _readable_metavars(command)
    try:
        command()
    except ConfigError as exc:
        _fail(f"configuration error: {exc}", 2)
    except FmbotError as exc:
        _fail(str(exc), 1)
    except KeyboardInterrupt:
        sys.exit(130)

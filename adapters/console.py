"""The console channel: an interactive chat in a terminal, or one message per line from a pipe.

When tracing, writing a reply's end (and "(stopped)" after Ctrl-C) is the turn's ``fmbot
deliver`` span, like the other channels'.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import signal
import sys
import threading
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory
from rich.console import Console
from rich.markup import escape

from bot.commands import HELP, parse_command
from bot.dialog import DialogManager
from bot.events import (
    FinalText,
    ImageReply,
    Incoming,
    Notice,
    ReplyEvent,
    TextDelta,
    sources_line,
)
from bot.observe import metrics, tracing
from bot.text import terminal_safe

log = logging.getLogger(__name__)

EXIT_COMMANDS = ("exit", "quit")
CONSOLE_HELP = (
    HELP + "\n/see PATH [QUESTION] — ask about a picture (a JPEG, PNG, WebP or GIF file; quote a "
    "PATH with spaces)\n/exit — leave (Ctrl-D works too; Ctrl-C stops a reply)"
)
SEE_USAGE = "Give a picture file: /see PATH [QUESTION], e.g. /see ~/photos/plant.jpg what is wrong?"


class ConsoleChannel:
    def __init__(self, manager: DialogManager, chat: str, home: Path) -> None:
        self.manager = manager
        manager.channel = "console"
        self.chat = chat
        self.home = home

    async def run(self, interactive: bool) -> None:
        if interactive:
            await self._interactive()
        else:
            for stream in (sys.stdout, sys.stderr):
                # A reply in a script that the locale cannot encode is shown with "?", not a crash.
                if isinstance(stream, io.TextIOWrapper):
                    stream.reconfigure(errors="replace")
            await self._piped(sys.stdin.buffer, sys.stdout, sys.stderr)

    # --- scripts and tests: one message per line ------------------------------------------

    async def _piped(self, stdin: BinaryIO, out: TextIO, err: TextIO) -> None:
        lines = _read_lines(stdin)
        while True:
            line = await lines.get()
            if not line:
                return
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            if self._is_exit(text):
                return
            async for event in self._events(text):
                self._write_plain(event, out, err)

    def _write_plain(self, event: ReplyEvent, out: TextIO, err: TextIO) -> None:
        if isinstance(event, TextDelta):
            out.write(terminal_safe(event.text))
        elif isinstance(event, FinalText):
            line = sources_line(event.sources)
            with delivering(metrics.current_turn.get(), _how(event)):
                out.write("\n" + (terminal_safe(line) + "\n" if line else ""))
        elif isinstance(event, Notice):
            (err if event.kind == "error" else out).write(terminal_safe(event.text) + "\n")
        elif isinstance(event, ImageReply):
            out.write(f"[image: {terminal_safe(str(self._save_image(event)))}]\n")
        out.flush()

    # --- people: line editing, history, streamed output ------------------------------------

    async def _interactive(self) -> None:
        console = Console(highlight=False)
        self.home.mkdir(parents=True, exist_ok=True)
        session: PromptSession[str] = PromptSession(
            history=FileHistory(str(self.home / "console_history"))
        )
        console.print(
            f"[bold]fmbot[/] — chat [cyan]{escape(terminal_safe(self.chat))}[/] on "
            f"[cyan]{escape(self.manager.model.name)}[/]. "
            "Type /help for commands, /exit to leave."
        )
        while True:
            try:
                text = await session.prompt_async("you> ")
            except KeyboardInterrupt:
                continue
            except EOFError:
                return
            if not text.strip():
                continue
            if self._is_exit(text):
                return
            await self._stream_to(console, text)

    async def _stream_to(self, console: Console, text: str) -> None:
        """Print one reply as it streams; Ctrl-C stops it and keeps what was printed."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGINT, task.cancel)
        started = False
        turn: metrics.TurnInfo | None = None  # for the span of a stopped reply's "(stopped)"
        try:
            async for event in self._events(text):
                turn = turn or metrics.current_turn.get()
                if isinstance(event, TextDelta):
                    if not started:
                        console.print("[bold green]bot>[/] ", end="")
                        started = True
                    # rich passes ESC through: a reply must not drive the terminal.
                    console.print(terminal_safe(event.text), end="", markup=False)
                elif isinstance(event, FinalText):
                    with delivering(turn, _how(event)):
                        console.print()
                        if event.sources:
                            line = terminal_safe(sources_line(event.sources))
                            console.print(line, style="dim", markup=False)
                    started = False
                elif isinstance(event, Notice):
                    style = {"info": "cyan", "warning": "yellow", "error": "bold red"}[event.kind]
                    console.print(terminal_safe(event.text), style=style, markup=False)
                elif isinstance(event, ImageReply):
                    path = terminal_safe(str(self._save_image(event)))
                    console.print(f"[magenta]image saved:[/] {escape(path)}")
        except asyncio.CancelledError:
            task.uncancel()
            with delivering(turn, "stopped"):
                console.print("\n[yellow](stopped)[/]")
        finally:
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(signal.SIGINT)

    # --- shared -----------------------------------------------------------------------------

    def _is_exit(self, text: str) -> bool:
        command = parse_command(text.strip())
        return command is not None and command.name in EXIT_COMMANDS

    async def _events(self, text: str) -> AsyncGenerator[ReplyEvent, None]:
        command = parse_command(text.strip())
        if command is not None and command.name == "help":
            yield Notice(CONSOLE_HELP)
            return
        pictures: tuple[str, ...] = ()
        if command is not None and command.name == "see":
            seen = see(command.arg)
            if seen is None:
                yield Notice(SEE_USAGE, "warning")
                return
            path, text = seen
            pictures = (f"file:{path}",)
        # The console user is the operator: no rate limits or budgets.
        incoming = Incoming(
            chat=self.chat, text=text, user="console", admin=True, pictures=pictures
        )
        async with contextlib.aclosing(self.manager.handle(incoming)) as events:
            async for event in events:
                yield event

    def _save_image(self, image: ImageReply) -> Path:
        folder = self.home / "images"
        folder.mkdir(parents=True, exist_ok=True)
        ext = {"image/png": "png", "image/webp": "webp"}.get(image.mime_type, "jpg")
        stem = re.sub(r"[^\w.-]+", "_", self.chat)
        taken = [
            int(m[1]) for p in folder.iterdir() if (m := re.fullmatch(rf"{stem}-(\d+)\..+", p.name))
        ]
        index = max(taken, default=0) + 1
        while True:
            path = folder / f"{stem}-{index:04d}.{ext}"
            try:
                with path.open("xb") as f:  # never overwrite an earlier image
                    f.write(image.data)
                return path
            except FileExistsError:
                index += 1


def delivering(turn: metrics.TurnInfo | None, how: str) -> contextlib.AbstractContextManager[Any]:
    """The ``fmbot deliver`` span of ``turn`` (when traced) while the block writes its reply."""
    return tracing.deliver(turn.span if turn is not None else None, "console", how)


def _how(reply: FinalText) -> str:
    return "complete" if reply.complete else "partial"


def see(arg: str) -> tuple[Path, str] | None:
    """``/see``'s argument as (absolute path, question); None without a path. A path with
    spaces is quoted ("..." or '...'); ``~`` is the home folder."""
    arg = arg.strip()
    if arg[:1] in ("'", '"'):
        end = arg.find(arg[0], 1)
        path, question = (arg[1:end], arg[end + 1 :]) if end > 0 else (arg[1:], "")
    else:
        path, _, question = arg.partition(" ")
    if not path.strip():
        return None
    return Path(path).expanduser().absolute(), question.strip()


def _read_lines(stdin: BinaryIO) -> asyncio.Queue[str]:
    """Lines from ``stdin`` read by a daemon thread ("" at end of input).

    Bytes, decoded line by line: a byte that is not UTF-8 becomes U+FFFD and the other lines
    are answered, whatever the locale or PYTHONIOENCODING says. A read that fails ends the
    input, so the process exits instead of waiting for a thread that died.

    A daemon thread, not ``asyncio.to_thread``: a blocked ``readline`` in the default executor
    would keep ``asyncio.run`` from exiting on Ctrl-C until stdin closed.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()

    def pump() -> None:
        try:
            while line := stdin.readline():
                text = line.decode("utf-8", errors="replace")
                loop.call_soon_threadsafe(queue.put_nowait, text)
        except (OSError, ValueError) as exc:
            log.error("could not read stdin: %s", exc)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, "")

    threading.Thread(target=pump, name="fmbot-stdin", daemon=True).start()
    return queue

"""A turn's reply events as server-sent events: ``delta``, ``notice``, ``image``, then ``final``.

``final`` always comes last, also after a command (a notice only): its ``status`` says how the
turn ended — ``complete``, ``incomplete`` (cut short: a model error or a newer message), ``error``
(a notice of kind error and no reply) or ``none`` (no reply from the model: a command's answer);
its ``sources`` are the passages a knowledge answer cites (``[{"n", "source", "heading"}]``,
empty for other replies). When tracing, sending a reply's ``final`` is the turn's ``fmbot deliver``
span (``fmbot.reply``: ``complete``, ``partial``, or ``stopped`` at shutdown).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Literal

from sse_starlette import ServerSentEvent

from bot.dialog import until
from bot.events import FinalText, ImageReply, Notice, ReplyEvent, Source, TextDelta
from bot.observe import metrics, tracing

SHUTDOWN = "The server is shutting down, so this reply was stopped here. Send it again shortly."
Status = Literal["complete", "incomplete", "error", "none"]


def event(name: str, data: dict[str, object]) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(data, ensure_ascii=False), event=name)


def image_data(image: ImageReply) -> dict[str, object]:
    """A picture as a data: URL the page shows inline (the CSP allows data: images only)."""
    encoded = base64.b64encode(image.data).decode("ascii")
    return {"src": f"data:{image.mime_type};base64,{encoded}", "prompt": image.prompt}


def sources_data(sources: Sequence[Source]) -> list[dict[str, object]]:
    return [{"n": s.n, "source": s.source, "heading": s.heading} for s in sources]


async def sse(
    events: AsyncIterator[ReplyEvent], stopped: asyncio.Event
) -> AsyncGenerator[ServerSentEvent, None]:
    """``events`` as server-sent events, until ``stopped`` is set (the server shuts down): then
    the turn is stopped like Ctrl-C (stored as stopped) and the stream still ends properly."""
    text = ""
    status: Status = "none"
    sources: tuple[Source, ...] = ()
    ended = False
    turn: metrics.TurnInfo | None = None

    async def to_the_end() -> AsyncGenerator[ReplyEvent, None]:
        nonlocal ended, turn
        async for reply in events:  # closed by the caller, who opened it
            if turn is None:  # until() steps the turn in tasks of its own: seen only here
                turn = metrics.current_turn.get()
            yield reply
        ended = True

    async with contextlib.aclosing(until(stopped, to_the_end())) as replies:
        async for reply in replies:
            if isinstance(reply, TextDelta):
                text += reply.text  # what the final event says if the turn is stopped
                yield event("delta", {"text": reply.text})
            elif isinstance(reply, Notice):
                if reply.kind == "error" and status == "none":
                    status = "error"
                yield event("notice", {"text": reply.text, "kind": reply.kind})
            elif isinstance(reply, ImageReply):
                status = "complete"
                yield event("image", image_data(reply))
            elif isinstance(reply, FinalText):
                text, sources = reply.text, reply.sources
                status = "complete" if reply.complete else "incomplete"
    if not ended:
        status = "incomplete"
        yield event("notice", {"text": SHUTDOWN, "kind": "warning"})
    final = event("final", {"text": text, "status": status, "sources": sources_data(sources)})
    span = None
    if turn is not None and turn.span is not None and (text or status == "complete"):
        how = "stopped" if not ended else "complete" if status == "complete" else "partial"
        # Open across the yield, not a block: the stream may be closed from another context.
        span = tracing.start_delivery(turn.span, "web", how)
    try:
        yield final  # resumed once the server has sent it
    finally:
        if span is not None:
            span.end()

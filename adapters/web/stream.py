"""A turn's reply events as server-sent events: ``delta``, ``notice``, ``image``, then ``final``.

``final`` always comes last, also after a command (a notice only): its ``status`` says how the
turn ended — ``complete``, ``incomplete`` (cut short: a model error or a newer message), ``error``
(a notice of kind error and no reply) or ``none`` (no reply from the model: a command's answer).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Literal

from sse_starlette import ServerSentEvent

from bot.events import FinalText, ImageReply, Notice, ReplyEvent, TextDelta

Status = Literal["complete", "incomplete", "error", "none"]


def event(name: str, data: dict[str, object]) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(data, ensure_ascii=False), event=name)


def image_data(image: ImageReply) -> dict[str, object]:
    """A picture as a data: URL the page shows inline (the CSP allows data: images only)."""
    encoded = base64.b64encode(image.data).decode("ascii")
    return {"src": f"data:{image.mime_type};base64,{encoded}", "prompt": image.prompt}


async def sse(events: AsyncIterator[ReplyEvent]) -> AsyncGenerator[ServerSentEvent, None]:
    text = ""
    status: Status = "none"
    async for reply in events:
        if isinstance(reply, TextDelta):
            yield event("delta", {"text": reply.text})
        elif isinstance(reply, Notice):
            if reply.kind == "error" and status == "none":
                status = "error"
            yield event("notice", {"text": reply.text, "kind": reply.kind})
        elif isinstance(reply, ImageReply):
            status = "complete"
            yield event("image", image_data(reply))
        elif isinstance(reply, FinalText):
            text = reply.text
            status = "complete" if reply.complete else "incomplete"
    yield event("final", {"text": text, "status": status})

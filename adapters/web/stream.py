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


def _event(name: str, data: dict[str, object]) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(data, ensure_ascii=False), event=name)


def image_data(image: ImageReply) -> dict[str, object]:
    """A picture as a data: URL the page shows inline (the CSP allows data: images only)."""
    encoded = base64.b64encode(image.data).decode("ascii")
    return {"src": f"data:{image.mime_type};base64,{encoded}", "prompt": image.prompt}


async def sse(events: AsyncIterator[ReplyEvent]) -> AsyncGenerator[ServerSentEvent, None]:
    text = ""
    status: Status = "none"
    async for event in events:
        if isinstance(event, TextDelta):
            yield _event("delta", {"text": event.text})
        elif isinstance(event, Notice):
            if event.kind == "error" and status == "none":
                status = "error"
            yield _event("notice", {"text": event.text, "kind": event.kind})
        elif isinstance(event, ImageReply):
            status = "complete"
            yield _event("image", image_data(event))
        elif isinstance(event, FinalText):
            text = event.text
            status = "complete" if event.complete else "incomplete"
    yield _event("final", {"text": text, "status": status})

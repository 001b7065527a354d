"""Reading a request's JSON body: one object with the fields a route names, or a 400."""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request

MAX_BODY = 1_000_000  # bytes: a template or a message, never more


async def json_object(request: Request, **fields: type) -> dict[str, Any]:
    """The body's fields, each checked against its type; HTTPException(400) says what is wrong.
    A field given as ``type(None)``-able is optional: absent fields are left out."""
    body = await _bounded_body(request)
    try:
        data = json.loads(body or b"null")
    except ValueError:
        raise HTTPException(400, "send a JSON object (Content-Type: application/json)") from None
    if not isinstance(data, dict):
        raise HTTPException(400, 'send a JSON object, e.g. {"text": "hello"}')
    for name, kind in fields.items():
        if name in data and not isinstance(data[name], kind):
            raise HTTPException(400, f"{name!r} must be a {kind.__name__}")
    return data


async def _bounded_body(request: Request) -> bytes:
    """The body, refused once it passes MAX_BODY: never held whole in memory when too large."""
    too_large = HTTPException(413, f"the body is over {MAX_BODY} bytes: send less")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def required(data: dict[str, Any], name: str) -> Any:
    if name not in data:
        raise HTTPException(400, f"the JSON object needs {name!r}")
    return data[name]

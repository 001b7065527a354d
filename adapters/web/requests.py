"""Reading a request's JSON body: one object with the fields a route names, or a 400."""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request

MAX_BODY = 1_000_000  # bytes: a template or a message, never more
NESTED = "send an object of strings, lists and objects a few levels deep"
SURROGATE = (
    "the JSON holds a lone surrogate (e.g. \\ud800, half of a UTF-16 pair), which is not text: "
    "send valid Unicode"
)


async def json_object(request: Request, **fields: type) -> dict[str, Any]:
    """The body's fields, each checked against its type; HTTPException(400) says what is wrong.
    A field given as ``type(None)``-able is optional: absent fields are left out."""
    body = await bounded_body(request, MAX_BODY, f"the body is over {MAX_BODY} bytes: send less")
    try:
        data = json.loads(body or b"null")
    except RecursionError:  # e.g. 200000 '[': the parser's depth is the interpreter's
        raise HTTPException(400, f"the JSON is nested too deeply: {NESTED}") from None
    except ValueError:
        raise HTTPException(400, "send a JSON object (Content-Type: application/json)") from None
    if not isinstance(data, dict):
        raise HTTPException(400, 'send a JSON object, e.g. {"text": "hello"}')
    check_unicode(data)
    for name, kind in fields.items():
        if name in data and not isinstance(data[name], kind):
            raise HTTPException(400, f"{name!r} must be a {kind.__name__}")
    return data


def check_unicode(data: dict[str, Any]) -> None:
    """HTTPException(400) unless every string in ``data`` can be written as UTF-8. JSON may
    escape lone surrogates ("\\ud800") that no file, reply or response can hold; refused here,
    before a route writes or echoes them (a 500 otherwise)."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise HTTPException(400, SURROGATE) from None
    except RecursionError:
        raise HTTPException(400, f"the JSON is nested too deeply: {NESTED}") from None


async def bounded_body(request: Request, limit: int, too_large: str) -> bytes:
    """The body, refused with 413 and ``too_large`` once it passes ``limit`` bytes: never held
    whole in memory when too large."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, too_large)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, too_large)
        chunks.append(chunk)
    return b"".join(chunks)


def required(data: dict[str, Any], name: str) -> Any:
    if name not in data:
        raise HTTPException(400, f"the JSON object needs {name!r}")
    return data[name]

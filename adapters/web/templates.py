"""The template API: list, read, check, save, and render the exact messages of a turn.

A draft (``source`` in the body) is checked and rendered as if it were saved, without saving it:
the playground validates as the author types and shows what the draft would send.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from adapters.web.editing import NAME, Problem, draft, file_of, problem, save
from adapters.web.requests import json_object, required
from bot.errors import PromptError
from bot.events import Message
from bot.prompts.library import PromptLibrary
from bot.prompts.render import build_messages
from bot.prompts.template import PromptTemplate
from bot.prompts.variables import coerce_variables

NOT_FOUND = "no template named {!r}: GET /api/templates lists them"
NAME_RULE = "a template name is letters, digits, '_', '-' and '.', not starting with '.'"


class Unprocessable(Exception):
    """The request is well formed but its template or variables are not: 422 with problems."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(problems)
        self.problems = problems

    def response(self) -> JSONResponse:
        return JSONResponse({"errors": [p.as_json() for p in self.problems]}, status_code=422)


def checked_name(name: str) -> str:
    if not NAME.match(name):
        raise HTTPException(400, NAME_RULE)
    return name


class TemplateRoutes:
    def __init__(self, library: PromptLibrary) -> None:
        self.library = library

    async def index(self, request: Request) -> JSONResponse:
        templates = [
            {
                "name": t.name,
                "description": t.description,
                "path": t.source.name if t.source else None,
                "chat_mode": t.chat_mode,
                "variables": t.variables,
            }
            for t in self.library.all()
        ]
        broken = [
            {"path": path.name, **problem(exc).as_json()}
            for path, exc in sorted(self.library.errors.items())
        ]
        return JSONResponse({"templates": templates, "problems": broken})

    async def read(self, request: Request) -> JSONResponse:
        name = checked_name(request.path_params["name"])
        path = file_of(self.library, name)
        try:
            source = await asyncio.to_thread(path.read_text, encoding="utf-8")
        except FileNotFoundError:
            raise HTTPException(404, NOT_FOUND.format(name)) from None
        return JSONResponse({"name": name, "path": path.name, "source": source})

    async def check(self, request: Request) -> JSONResponse:
        """A draft's problems (200 either way) and, when it has none, its variables."""
        name = checked_name(request.path_params["name"])
        source = required(await json_object(request, source=str), "source")
        template, problems = await self.draft(name, source)
        variables = template.variables if template is not None else None
        return JSONResponse({"errors": [p.as_json() for p in problems], "variables": variables})

    async def write(self, request: Request) -> JSONResponse:
        """Saved only if ``fmbot prompts check`` would pass it; else 422, the file as it was."""
        name = checked_name(request.path_params["name"])
        source = required(await json_object(request, source=str), "source")
        template, problems = await self.draft(name, source)
        if template is None:
            return Unprocessable(problems).response()
        path = file_of(self.library, name)
        await asyncio.to_thread(save, path, source)
        self.library.refresh()  # this process serves the new version at once
        return JSONResponse({"name": name, "path": path.name, "saved": True})

    async def render(self, request: Request) -> JSONResponse:
        data = await json_object(request, template=str, message=str, variables=dict, source=str)
        try:
            template = await self.template_of(data)
            messages = render(template, data.get("message", ""), data.get("variables"))
        except Unprocessable as exc:
            return exc.response()
        rows = [{"role": m.role, "text": m.text} for m in messages]
        return JSONResponse({"template": template.name, "messages": rows})

    async def draft(self, name: str, source: str) -> tuple[PromptTemplate | None, list[Problem]]:
        return await asyncio.to_thread(draft, source, file_of(self.library, name), name)

    async def template_of(self, data: dict[str, Any]) -> PromptTemplate:
        """``template`` as saved, or the draft in ``source`` when given (Unprocessable if bad)."""
        name = checked_name(required(data, "template"))
        if "source" in data:
            template, problems = await self.draft(name, data["source"])
            if template is None:
                raise Unprocessable(problems)
            return template
        saved = self.library.get(name)
        if saved is None:
            raise HTTPException(404, NOT_FOUND.format(name))
        return saved


def render(
    template: PromptTemplate, message: str, variables: dict[str, Any] | None
) -> list[Message]:
    """The messages a model is sent for ``message`` in a fresh chat (no history)."""
    try:
        values = coerce_variables(template, variables or {}, known_only=True)
        messages = build_messages(template, message, (), values)
    except PromptError as exc:
        raise Unprocessable([problem(exc)]) from None
    except ValueError as exc:
        raise Unprocessable([Problem(1, 1, str(exc))]) from None
    return messages

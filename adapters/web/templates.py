"""The template API: list, read, check-and-save, and render the exact messages of a turn."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from adapters.web.editing import NAME, Problem, check_source, file_of, problem, save
from adapters.web.requests import json_object, required
from bot.errors import PromptError
from bot.prompts.library import PromptLibrary
from bot.prompts.render import build_messages
from bot.prompts.template import PromptTemplate
from bot.prompts.variables import coerce_variables

NOT_FOUND = "no template named {!r}: GET /api/templates lists them"


def template_name(request: Request) -> str:
    name = str(request.path_params["name"])
    if not NAME.match(name):
        raise HTTPException(
            400, "a template name is letters, digits, '_', '-' and '.', not starting with '.'"
        )
    return name


def unprocessable(problems: list[Problem]) -> JSONResponse:
    return JSONResponse({"errors": [p.as_json() for p in problems]}, status_code=422)


class TemplateRoutes:
    def __init__(self, library: PromptLibrary) -> None:
        self.library = library

    async def list(self, request: Request) -> JSONResponse:
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
        name = template_name(request)
        path = file_of(self.library, name)
        try:
            source = await asyncio.to_thread(path.read_text, encoding="utf-8")
        except FileNotFoundError:
            raise HTTPException(404, NOT_FOUND.format(name)) from None
        return JSONResponse({"name": name, "path": path.name, "source": source})

    async def write(self, request: Request) -> JSONResponse:
        """Saved only if ``fmbot prompts check`` would pass it; else 422, the file as it was."""
        name = template_name(request)
        source = required(await json_object(request, source=str), "source")
        path = file_of(self.library, name)
        problems = await asyncio.to_thread(check_source, source, path, name)
        if problems:
            return unprocessable(problems)
        await asyncio.to_thread(save, path, source)
        self.library.refresh()  # this process serves the new version at once
        return JSONResponse({"name": name, "path": path.name, "saved": True})

    async def render(self, request: Request) -> JSONResponse:
        data = await json_object(request, template=str, message=str, variables=dict)
        name = required(data, "template")
        template = self.library.get(name)
        if template is None:
            raise HTTPException(404, NOT_FOUND.format(name))
        try:
            messages = render_messages(template, data.get("message", ""), data.get("variables"))
        except (ValueError, PromptError) as exc:
            found = problem(exc) if isinstance(exc, PromptError) else Problem(1, 1, str(exc))
            return unprocessable([found])
        return JSONResponse({"template": name, "messages": messages})


def render_messages(
    template: PromptTemplate, message: str, variables: dict[str, Any] | None
) -> list[dict[str, str]]:
    """The messages a model is sent for ``message`` in a fresh chat (no history)."""
    values = coerce_variables(template, variables or {}, known_only=True)
    return [{"role": m.role, "text": m.text} for m in build_messages(template, message, (), values)]

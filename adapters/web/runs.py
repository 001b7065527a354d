"""The playground's model runs: a template (saved or a draft) and a message, sent to one of the
models this server offers, streamed back with tokens and latency. Nothing is stored.

The models offered are the configured text (and vision) model plus FMBOT_WEB_MODELS: a page may
not make the server build any backend it names, each kept for the life of the process.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from adapters.web.requests import json_object, required
from adapters.web.stream import event
from adapters.web.templates import TemplateRoutes, Unprocessable, render
from bot.dialog import DialogManager
from bot.errors import ConfigError, FmbotError, ModelError
from bot.model_spec import LOCAL_MODELS
from bot.models.base import TextModel
from bot.models.registry import get_text_model
from bot.settings import Settings


async def build_offered(settings: Settings, specs: tuple[str, ...]) -> None:
    """Each FMBOT_WEB_MODELS spec built at start-up (no request is made; the backend is kept for
    the process, as a run would keep it), so missing credentials stop ``fmbot web`` with the
    setting to fix rather than failing every run on the page. A local model is only found: loading
    it takes seconds and memory it may never need."""
    for spec in specs:
        kind, _, name = spec.partition(":")
        try:
            if kind == "local":
                from bot.models.local import find_gguf

                find_gguf(LOCAL_MODELS[name])
            else:
                await get_text_model(settings.model_copy(update={"text_model": spec}))
        except FmbotError as exc:
            raise ConfigError(
                "FMBOT_WEB_MODELS",
                spec,
                f"the playground cannot build it ({exc}): fix that, or leave it out",
            ) from None


class RunRoutes:
    def __init__(
        self,
        manager: DialogManager,
        templates: TemplateRoutes,
        settings: Settings,
        extra_models: tuple[str, ...],
    ) -> None:
        self.manager = manager
        self.templates = templates
        self.settings = settings
        offered = [settings.text_model, settings.vision_model, *extra_models]
        self.specs = list(dict.fromkeys(s for s in offered if s))

    async def models(self, request: Request) -> JSONResponse:
        return JSONResponse({"models": self.specs})

    async def model(self, spec: str) -> TextModel:
        if spec not in self.specs:
            raise HTTPException(
                400,
                f"model {spec!r} is not offered here: use one of {', '.join(self.specs)} "
                "(FMBOT_WEB_MODELS adds more)",
            )
        try:
            return await get_text_model(self.settings.model_copy(update={"text_model": spec}))
        except FmbotError as exc:  # credentials missing, a local model not installed
            raise HTTPException(
                422, f"model {spec!r} cannot run on this server: {exc} (its settings)"
            ) from None

    async def run(self, request: Request) -> EventSourceResponse | JSONResponse:
        data = await json_object(
            request, model=str, template=str, source=str, message=str, variables=dict
        )
        model = await self.model(required(data, "model"))
        try:
            template = await self.templates.template_of(data)
            messages = render(template, data.get("message", ""), data.get("variables"))
        except Unprocessable as exc:
            return exc.response()
        options = self.manager.options_for(template)

        async def events() -> AsyncGenerator[ServerSentEvent, None]:
            started = time.monotonic()
            first: float | None = None
            response = model.respond(messages, options)
            status = "complete"
            try:
                async with contextlib.aclosing(aiter(response)) as stream:
                    async for delta in stream:
                        first = first or time.monotonic()
                        yield event("delta", {"text": delta})
            except ModelError as exc:
                status = "error"
                yield event("notice", {"text": str(exc), "kind": "error"})
            usage = response.usage
            yield event(
                "final",
                {
                    "text": response.text,
                    "status": status,
                    "model": model.name,
                    "input_tokens": usage.input_tokens if usage else None,
                    "output_tokens": usage.output_tokens if usage else None,
                    "latency_ms": round((time.monotonic() - started) * 1000),
                    "first_token_ms": round((first - started) * 1000) if first else None,
                },
            )

        return EventSourceResponse(events())

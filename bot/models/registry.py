"""Turn a model spec from settings (``local:smollm2``, ``yandex:...``) into a backend.

Backends are created once per process and spec, then reused: loading a model or opening a
connection pool is the expensive part, not a turn.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from bot.errors import ConfigError
from bot.models.base import TextModel

if TYPE_CHECKING:
    from bot.settings import Settings

TEXT_ACCEPTED = "use local:smollm2"

_text_models: dict[tuple[str, int], TextModel] = {}
_lock = asyncio.Lock()


def check_text_model_spec(spec: str) -> None:
    """Raise ConfigError unless ``spec`` names a text backend fmbot knows."""
    from bot.models.local import LOCAL_MODELS

    kind, _, name = spec.partition(":")
    if kind == "local" and name in LOCAL_MODELS:
        return
    raise ConfigError("FMBOT_TEXT_MODEL", spec, TEXT_ACCEPTED)


async def get_text_model(settings: Settings) -> TextModel:
    """The process-wide backend for ``settings.text_model`` (created on first use)."""
    spec = settings.text_model
    check_text_model_spec(spec)
    key = (spec, settings.context_tokens)
    async with _lock:
        model = _text_models.get(key)
        if model is None:
            model = await _create(spec, settings)
            _text_models[key] = model
        return model


async def _create(spec: str, settings: Settings) -> TextModel:
    kind, _, name = spec.partition(":")
    if kind == "local":
        from bot.models.local import LOCAL_MODELS, LocalModel, find_gguf

        path = find_gguf(LOCAL_MODELS[name])
        # Loading takes a second or two; keep the event loop free meanwhile.
        return await asyncio.to_thread(
            LocalModel,
            path,
            name=spec,
            context_window=settings.context_tokens,
            threads=settings.local_threads,
        )
    raise ConfigError("FMBOT_TEXT_MODEL", spec, TEXT_ACCEPTED)  # pragma: no cover

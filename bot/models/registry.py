"""Turn a model spec from settings (``local:smollm2``, ``yandex:...``) into a backend.

Backends are created once per process and spec, then reused: loading a model or opening a
connection pool is the expensive part, not a turn.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from bot.errors import ConfigError
from bot.model_spec import (
    LOCAL_MODELS,
    TEXT_ACCEPTED,
    TEXT_SETTING,
    check_image_model_spec,
    check_text_model_spec,
)
from bot.models.base import ImageModel, TextModel

if TYPE_CHECKING:
    from bot.settings import Settings

_text_models: dict[tuple[str, int], TextModel] = {}
_image_models: dict[str, ImageModel] = {}
_vision_models: dict[str, TextModel] = {}
_lock = asyncio.Lock()


async def get_text_model(settings: Settings) -> TextModel:
    """The process-wide backend for ``settings.text_model`` (created on first use)."""
    spec = settings.text_model
    check_text_model_spec(spec)
    key = (spec, settings.context_tokens)
    async with _lock:
        model = _text_models.get(key)
        if model is None:
            model = await _create_text(spec, settings)
            _text_models[key] = model
        return model


async def get_image_model(settings: Settings) -> ImageModel | None:
    """The backend for ``settings.image_model``, or None when no image model is configured."""
    spec = settings.image_model
    if not spec:
        return None
    from bot.models.remote import create_image_model

    check_image_model_spec(spec)
    async with _lock:
        model = _image_models.get(spec)
        if model is None:
            model = create_image_model(spec, settings)
            assert model is not None  # check_image_model_spec accepted it
            _image_models[spec] = model
        return model


async def get_vision_model(settings: Settings) -> TextModel | None:
    """The backend for ``settings.vision_model`` (pictures), or None when none is configured."""
    spec = settings.vision_model
    if not spec:
        return None
    from bot.models.remote import create_vision_model

    async with _lock:
        model = _vision_models.get(spec)
        if model is None:
            model = create_vision_model(spec, settings)  # ConfigError: a bad spec, credentials
            _vision_models[spec] = model
        return model


async def close_models() -> None:
    """Close every cached backend (HTTP pools); the next get_* creates fresh ones."""
    async with _lock:
        models: list[TextModel | ImageModel] = [
            *_text_models.values(),
            *_image_models.values(),
            *_vision_models.values(),
        ]
        _text_models.clear()
        _image_models.clear()
        _vision_models.clear()
    for model in models:
        await model.aclose()


async def _create_text(spec: str, settings: Settings) -> TextModel:
    kind, _, name = spec.partition(":")
    if kind == "echo":
        from bot.models.echo import EchoModel

        return EchoModel.from_spec(spec, context_window=settings.context_tokens)
    if kind == "local":
        from bot.models.local import LocalModel, find_gguf

        path = find_gguf(LOCAL_MODELS[name])
        # Loading takes a second or two; keep the event loop free meanwhile.
        return await asyncio.to_thread(
            LocalModel,
            path,
            name=spec,
            context_window=settings.context_tokens,
            threads=settings.local_threads,
            cache_mb=settings.local_cache_mb,
        )
    from bot.models.remote import create_text_model

    model = create_text_model(spec, settings)  # ConfigError when credentials are missing
    if model is None:  # pragma: no cover - check_text_model_spec rejects other kinds
        raise ConfigError(TEXT_SETTING, spec, TEXT_ACCEPTED)
    return model

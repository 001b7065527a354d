"""Settings and generation options for a batch run (``--model``, ``--async``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode

from bot.errors import ConfigError
from bot.models.base import GenerationOptions
from bot.prompts.template import PromptTemplate
from bot.settings import Settings, load_settings

ASYNC_ACCEPTED = "--async needs a yandex: model, e.g. --model yandex:yandexgpt-lite/latest"


def with_async_mode(spec: str) -> str:
    """``yandex:M[?mode=...]`` -> ``yandex:M?mode=async`` (Yandex's cheaper operations API)."""
    return with_mode(spec, "async", "--async")


def with_mode(spec: str, mode: str, option: str) -> str:
    """``yandex:M[?mode=...]`` -> ``yandex:M?mode=MODE``."""
    kind, _, rest = spec.partition(":")
    if kind != "yandex":
        raise ConfigError(option, spec, ASYNC_ACCEPTED.replace("--async", option))
    name, _, query = rest.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    options["mode"] = mode
    return f"yandex:{name}?{urlencode(options)}"


def model_identity(spec: str) -> str:
    """The spec without ``mode``: stream, sync and async runs of one model give the same
    results, so a run may resume in another mode."""
    base, _, query = spec.partition("?")
    options = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "mode"]
    return f"{base}?{urlencode(options)}" if options else base


def batch_settings(model: str | None, use_async: bool) -> Settings:
    """Settings with ``--model`` (default FMBOT_TEXT_MODEL) and ``--async`` applied, validated."""
    overrides: dict[str, Any] = {"FMBOT_TEXT_MODEL": model} if model else {}
    settings = load_settings(**overrides)
    if use_async:
        settings = load_settings(
            **{**overrides, "FMBOT_TEXT_MODEL": with_async_mode(settings.text_model)}
        )
    return settings


def options_for(settings: Settings, template: PromptTemplate) -> GenerationOptions:
    """Like a running bot: the template's options over the settings, FMBOT_MAX_TOKENS a ceiling."""
    base = GenerationOptions(temperature=settings.temperature, max_tokens=settings.max_tokens)
    options = base.merged(template.options)
    if options.max_tokens and options.max_tokens > settings.max_tokens:
        options = options.model_copy(update={"max_tokens": settings.max_tokens})
    return options

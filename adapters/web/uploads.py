"""Pictures sent from the page: uploaded first, then named by their id in a message.

``POST /api/chats/{chat}/pictures`` takes the picture's bytes as the body. What it is, is what
Pillow finds when it decodes it (:func:`bot.pictures.normalise`), never the Content-Type or a
file name. The bytes are kept in the chat's media folder (``uploads/SHA256``), so ``/forget``
removes them with the chat's other pictures; a message names them (``"pictures": [id]``) and the
turn reads them as ``file:`` pictures, as the console's ``/see`` does. The page shows the
normalised copy (``GET /api/chats/{chat}/pictures/{id}``): upright, bounded, JPEG or PNG.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path
from urllib.parse import quote

from starlette.exceptions import HTTPException

from bot.events import Picture
from bot.pictures import MAX_PICTURE_BYTES, MediaDir, Pictures, normalise
from bot.pictures.media import write_whole
from bot.stores.base import Turn

ID = re.compile(r"[0-9a-f]{64}")  # the SHA-256 of the uploaded bytes
MAX_PICTURES = 10  # a message's, as in a Telegram album
TOO_LARGE = (
    f"the picture is over {MAX_PICTURE_BYTES // 2**20} MB: send a smaller one "
    "(a phone photo is 2 to 5 MB)"
)


class Uploads:
    """The uploaded pictures of the web's chats, in ``media``'s chat folders."""

    def __init__(self, pictures: Pictures, media: MediaDir) -> None:
        self.pictures = pictures  # the manager's: how large a picture it sends a model
        self.media = media

    def path(self, chat: str, picture: str) -> Path:
        return self.media.folder(chat) / "uploads" / picture

    async def add(self, chat: str, raw: bytes) -> Picture:
        """Keep ``raw`` for ``chat``; PictureError when it is not a picture one can read."""
        path = self.path(chat, hashlib.sha256(raw).hexdigest())
        source = f"file:{path}"
        picture = await asyncio.to_thread(normalise, raw, source, self.pictures.max_side)
        await asyncio.to_thread(_write, path, raw)
        await self.media.save(chat, picture)  # the copy the page shows, and the turn finds
        return picture

    def sources(self, chat: str, ids: object) -> tuple[str, ...]:
        """A message's ``pictures`` as the sources of its Incoming; 400 unless each is the id
        of a picture uploaded to this chat."""
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise HTTPException(400, "'pictures' must be a list of ids from POST .../pictures")
        if len(ids) > MAX_PICTURES:
            raise HTTPException(400, f"a message takes at most {MAX_PICTURES} pictures")
        unknown = [i for i in ids if not ID.fullmatch(i) or not self.path(chat, i).is_file()]
        if unknown:
            raise HTTPException(
                400,
                f"no picture {unknown[0][:70]!r} in this chat: upload it first with "
                "POST /api/chats/{chat}/pictures (its id is in the answer)",
            )
        return tuple(f"file:{self.path(chat, i)}" for i in ids)


def shown_at(name: str, sha256: str) -> str:
    """Where the page gets a chat's picture."""
    return f"/api/chats/{quote(name, safe='')}/pictures/{sha256}"


def picture_data(name: str, picture: Picture) -> dict[str, object]:
    """An upload's answer: its id, where the page gets it, its size as a model is sent it."""
    return {
        "picture": picture.sha256,
        "src": shown_at(name, picture.sha256),
        "width": picture.width,
        "height": picture.height,
    }


def turn_pictures(name: str, turn: Turn) -> list[dict[str, object]]:
    """The pictures a stored message brought (its meta keeps their digests), for the page."""
    refs = turn.meta.get("pictures")
    if not isinstance(refs, list):
        return []
    return [
        {"src": shown_at(name, str(ref["sha256"])), "width": ref.get("width"),
         "height": ref.get("height")}
        for ref in refs
        if isinstance(ref, dict) and ID.fullmatch(str(ref.get("sha256", "")))
    ]  # fmt: skip


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, data)  # named by its digest: the same picture may be uploaded twice at once

"""Normalised copies of the pictures of local channels, under ``FMBOT_HOME/media``.

A console user's file may be moved or edited after it was sent; the copy keeps follow-up
questions about it answerable. One folder per chat (named by a digest of the chat key, which may
hold characters a path cannot), so ``/forget`` removes a chat's pictures at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import secrets
import shutil
from pathlib import Path

from bot.events import Picture

_EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png"}


class MediaDir:
    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, chat: str) -> Path:
        """The chat's folder: ``/forget`` removes it whole, with whatever a channel keeps in
        it (the web channel's uploads)."""
        return self.root / hashlib.sha256(chat.encode()).hexdigest()[:32]

    async def save(self, chat: str, picture: Picture) -> None:
        await asyncio.to_thread(self._save, chat, picture)

    def _save(self, chat: str, picture: Picture) -> None:
        folder = self.folder(chat)
        folder.mkdir(parents=True, exist_ok=True)
        write_whole(folder / f"{picture.sha256}{_EXTENSIONS[picture.mime_type]}", picture.data)

    async def load(self, chat: str, sha256: str, source: str) -> Picture | None:
        """The stored copy of the picture whose source file had ``sha256``; None if absent."""
        return await asyncio.to_thread(self._load, chat, sha256, source)

    def _load(self, chat: str, sha256: str, source: str) -> Picture | None:
        from PIL import Image  # only to read the size back (from the header, not decoded)

        for mime, extension in _EXTENSIONS.items():
            path = self.folder(chat) / f"{sha256}{extension}"
            try:
                data = path.read_bytes()
                with Image.open(io.BytesIO(data)) as image:  # not a second read of the file
                    width, height = image.size
            except OSError:
                continue
            return Picture(data, mime, width, height, source, sha256)
        return None

    async def forget(self, chat: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self.folder(chat), True)

    def count(self, chat: str) -> int:
        """Pictures stored for ``chat`` (for /forget's report and tests)."""
        folder = self.folder(chat)
        return (
            sum(1 for p in folder.iterdir() if p.suffix in (".jpg", ".png"))
            if folder.is_dir()
            else 0
        )


def write_whole(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, named by its digest: whole or absent, also if we are killed
    while writing. The temporary file has a name of its own, as the same picture may be saved
    twice at once (an upload and the turn that reads it); the second rename replaces the file
    with the same bytes."""
    if path.exists():
        return
    partial = path.with_name(f"{path.name}.{secrets.token_hex(4)}.part")
    file = partial.open("xb")  # ours alone from here (another's is never removed below)
    try:
        with file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise

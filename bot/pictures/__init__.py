"""Pictures users send: fetched from where the channel says (a file, a Telegram ``file_id``),
normalised for a vision model, kept by reference in history and found again for follow-ups.

- :mod:`bot.pictures.normalise` — Pillow: upright, JPEG or PNG, longest side bounded.
- :mod:`bot.pictures.media` — the normalised copies of local files under ``FMBOT_HOME/media``.
- :mod:`bot.pictures.library` — :class:`Pictures`, what the dialog manager asks for a picture.
"""

from bot.pictures.library import Fetcher, Pictures, picture_refs
from bot.pictures.media import MediaDir
from bot.pictures.normalise import DEFAULT_MAX_SIDE, MAX_PICTURE_BYTES, normalise

__all__ = [
    "DEFAULT_MAX_SIDE",
    "MAX_PICTURE_BYTES",
    "Fetcher",
    "MediaDir",
    "Pictures",
    "normalise",
    "picture_refs",
]

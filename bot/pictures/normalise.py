"""Turning the bytes of a picture a user sent into what a vision model is sent.

Phone photos are often stored sideways with an EXIF orientation tag, are 4000×3000 px and
several MB, and may be WebP or an animated GIF. Models take JPEG or PNG and scale large pictures
down themselves, so sending one as is costs upload time and tokens for nothing. Here: the EXIF
orientation is applied, the first frame of an animation taken, the longest side bounded, and the
result is JPEG (PNG where the picture has transparency).
"""

from __future__ import annotations

import hashlib
import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from bot.errors import PictureError
from bot.events import Picture

#: FMBOT_VISION_MAX_SIDE's default: the size past which the common vision models downscale
#: anyway (Claude's and Qwen2.5-VL's guidance is ~1568 px on the long side).
DEFAULT_MAX_SIDE = 1568
#: Larger files are refused before they are read: the cloud Bot API serves at most 20 MB.
MAX_PICTURE_BYTES = 20 * 1024 * 1024
#: Larger pictures are refused unread (a small file can decode to gigabytes: a "bomb").
MAX_PIXELS = 50_000_000
FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP", "GIF": "GIF", "MPO": "JPEG"}
ACCEPTED = "JPEG, PNG, WebP or GIF"
JPEG_QUALITY = 90


def normalise(raw: bytes, source: str, max_side: int = DEFAULT_MAX_SIDE) -> Picture:
    """``raw`` (a file's bytes) as a :class:`Picture`; PictureError says why it cannot be.

    CPU-bound (tens of ms for a phone photo): call it in a thread.
    """
    if len(raw) > MAX_PICTURE_BYTES:
        raise PictureError(
            f"This picture is {len(raw) / 2**20:.1f} MB; the limit is "
            f"{MAX_PICTURE_BYTES // 2**20} MB. Please send a smaller one."
        )
    digest = hashlib.sha256(raw).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as opened:
                if opened.format not in FORMATS:
                    raise PictureError(
                        f"This is a {opened.format or 'kind of'} image, which I cannot read: "
                        f"please send it as {ACCEPTED}."
                    )
                width, height = opened.size
                if width * height > MAX_PIXELS:
                    raise PictureError(
                        f"This picture is {width}×{height} pixels, more than I can read "
                        f"({MAX_PIXELS // 1_000_000} megapixels at most). "
                        "Please send a smaller one."
                    )
                opened.seek(0)  # an animation's first frame
                image = _upright(opened)
    except PictureError:
        raise
    except UnidentifiedImageError as exc:
        raise PictureError(
            f"This file is not a picture I can read: please send a {ACCEPTED} image."
        ) from exc
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombWarning) as exc:
        # Truncated or corrupt data surfaces only when the pixels are decoded.
        raise PictureError(
            "This picture is damaged and cannot be read. Please send it again or try another."
        ) from exc
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if image.mode == "RGBA":
        image.save(out, "PNG", optimize=True)
        mime = "image/png"
    else:
        image.save(out, "JPEG", quality=JPEG_QUALITY)
        mime = "image/jpeg"
    return Picture(out.getvalue(), mime, image.width, image.height, source, digest)


def _upright(image: Image.Image) -> Image.Image:
    """The decoded picture, rotated as its EXIF says, in RGB (RGBA when it has transparency)."""
    image.load()
    upright = ImageOps.exif_transpose(image) or image
    transparent = upright.mode in ("RGBA", "LA", "PA") or (
        upright.mode == "P" and "transparency" in upright.info
    )
    if transparent:
        rgba = upright.convert("RGBA")
        alpha_low, _ = rgba.getchannel("A").getextrema()  # one band: (min, max)
        if isinstance(alpha_low, int) and alpha_low < 255:  # some pixel is see-through: PNG
            return rgba
    return upright.convert("RGB")

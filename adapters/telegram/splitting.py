"""Cutting long replies into messages Telegram accepts (4096 UTF-16 units each).

Cuts fall on the best boundary that fits: a blank line, a line end, a sentence end, a space,
and only as a last resort anywhere. Cuts outside formatted spans are preferred; a span that must
be cut (a long code block) is clipped into both parts, so every part is valid on its own.
Concatenating the parts' texts gives back the whole text.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiogram.types import MessageEntity

TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024

# Where a new part may start, best first.
_BOUNDARIES = (
    re.compile(r"\n[ \t]*\n\s*"),  # after a blank line
    re.compile(r"\n\s*"),  # after a line
    re.compile(r"[.!?…][\"'»”)\]]*\s+"),  # after a sentence
    re.compile(r"\s+"),  # after a word
)


@dataclass(frozen=True, slots=True)
class Part:
    """One message: text plus entities (offsets in UTF-16 units, relative to this text)."""

    text: str
    entities: tuple[MessageEntity, ...] = ()

    @property
    def plain(self) -> Part:
        return Part(self.text)


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _utf16_offsets(text: str) -> list[int]:
    """offsets[i] = UTF-16 offset of text[i]; offsets[len(text)] = total length."""
    offsets = [0] * (len(text) + 1)
    total = 0
    for i, ch in enumerate(text):
        offsets[i] = total
        total += 2 if ord(ch) > 0xFFFF else 1
    offsets[len(text)] = total
    return offsets


def split(text: str, entities: Sequence[MessageEntity] = (), limit: int = TEXT_LIMIT) -> list[Part]:
    """``text`` as parts of at most ``limit`` UTF-16 units; whitespace-only parts are dropped."""
    offsets = _utf16_offsets(text)
    spans = [(e.offset, e.offset + e.length) for e in entities]

    def inside(i: int) -> bool:
        return any(start < offsets[i] < end for start, end in spans)

    candidates = [sorted({m.end() for m in p.finditer(text)}) for p in _BOUNDARIES]
    cuts: list[int] = []
    start = 0
    while offsets[-1] - offsets[start] > limit:
        # Largest end index whose part still fits.
        end = bisect.bisect_right(offsets, offsets[start] + limit) - 1
        half = bisect.bisect_left(offsets, offsets[start] + limit // 2)
        cut = _best_cut(candidates, start, end, half, inside)
        cuts.append(cut)
        start = cut
    bounds = list(zip([0, *cuts], [*cuts, len(text)], strict=True))
    parts = [_part(text, offsets, entities, a, b) for a, b in bounds]
    return [p for p in parts if p.text.strip()]


def _best_cut(
    candidates: list[list[int]], start: int, end: int, half: int, inside: Callable[[int], bool]
) -> int:
    # Prefer: a boundary past half the budget outside entities; then any boundary outside
    # entities; then a boundary inside one (clipping it); else a hard cut at the limit.
    for lowest, allow_inside in ((half, False), (start + 1, False), (start + 1, True)):
        for points in candidates:
            lo = bisect.bisect_left(points, max(lowest, start + 1))
            hi = bisect.bisect_right(points, end)
            for i in reversed(range(lo, hi)):
                if allow_inside or not inside(points[i]):
                    return points[i]
    return max(end, start + 1)


def _part(text: str, offsets: list[int], entities: Sequence[MessageEntity], a: int, b: int) -> Part:
    lo, hi = offsets[a], offsets[b]
    clipped = []
    for e in entities:
        start, end = max(e.offset, lo), min(e.offset + e.length, hi)
        if end > start:
            clipped.append(e.model_copy(update={"offset": start - lo, "length": end - start}))
    return Part(text[a:b], tuple(clipped))


def truncate(text: str, limit: int, ellipsis: str = "…") -> str:
    """``text`` cut to ``limit`` UTF-16 units, marked with ``ellipsis`` when cut."""
    if utf16_len(text) <= limit:
        return text
    offsets = _utf16_offsets(text)
    end = bisect.bisect_right(offsets, limit - utf16_len(ellipsis)) - 1
    return text[:end].rstrip() + ellipsis


def tail(text: str, limit: int, ellipsis: str = "…") -> str:
    """The last ``limit`` UTF-16 units of ``text``, marked with ``ellipsis`` when cut."""
    if utf16_len(text) <= limit:
        return text
    offsets = _utf16_offsets(text)
    start = bisect.bisect_left(offsets, offsets[-1] - limit + utf16_len(ellipsis))
    return ellipsis + text[start:].lstrip()

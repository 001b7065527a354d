"""Text that is safe to keep and safe to show: no lone surrogates, no terminal control sequences.

:func:`clean` is applied to every message a channel hands the manager (``Incoming`` does it), so
text that could not be decoded (a byte read with ``surrogateescape``) reaches no model, store or
log. :func:`terminal_safe` is applied on every path that writes text from users, models, stores
or templates to a terminal: a reply repeating ``ESC[2J`` or an OSC title sequence is shown, not
obeyed.
"""

from __future__ import annotations

import re

REPLACEMENT = "\ufffd"
_SURROGATES = re.compile("[\ud800-\udfff]")
# C0 controls except tab and newline, DEL, and C1 controls (U+0080-U+009F: 0x9B is a one-byte
# CSI on some terminals).
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(text: str) -> str:
    """``text`` with each lone surrogate (an undecodable byte, or half a pair) as U+FFFD."""
    if text.isascii():
        return text
    return _SURROGATES.sub(REPLACEMENT, text)


def _shown(match: re.Match[str]) -> str:
    code = ord(match[0])
    if code < 0x20:
        return "^" + chr(code + 0x40)  # caret notation: ESC is ^[, BEL is ^G, CR is ^M
    if code == 0x7F:
        return "^?"
    return f"\\x{code:02x}"


def terminal_safe(text: str) -> str:
    """``text`` with control characters other than newline and tab shown, not sent raw.

    ``\\r\\n`` becomes ``\\n``; a lone ``\\r`` (it moves the cursor back over what was printed)
    is shown as ``^M``. Lone surrogates become U+FFFD, so the result always encodes as UTF-8.
    """
    text = clean(text).replace("\r\n", "\n")
    return _CONTROLS.sub(_shown, text)

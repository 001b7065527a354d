"""What channels send to the dialog manager, and what it sends back.

The manager is transport-neutral: a channel turns its own update into an :class:`Incoming`, feeds
it to ``DialogManager.handle`` and renders the :data:`ReplyEvent` stream however it can.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from bot.text import clean


@dataclass(frozen=True, slots=True)
class Incoming:
    """One message from a user in a chat. ``chat`` is the key of the conversation's state."""

    chat: str
    text: str
    user: str | None = None
    #: Admins are exempt from rate limits and token budgets.
    admin: bool = False
    #: Pictures sent with the message, as sources the manager fetches them from (so a queue
    #: worker fetches them itself): ``file:/abs/path``, or a scheme a channel registers
    #: (``telegram:FILE_ID``). See :mod:`bot.pictures`.
    pictures: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Every channel's text passes here: an undecodable byte (read with surrogateescape)
        # becomes U+FFFD before it can reach a model, a store or a log, none of which take it.
        object.__setattr__(self, "text", clean(self.text))


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the reply as the model produces it."""

    text: str


@dataclass(frozen=True, slots=True)
class Source:
    """A passage a knowledge answer was given: its number ``[n]`` in the prompt and the reply,
    the file it came from (relative to the folder added) and its heading ("" for none)."""

    n: int
    source: str
    heading: str = ""

    @property
    def label(self) -> str:
        return f"{self.source} — {self.heading}" if self.heading else self.source


def sources_line(sources: Sequence[Source]) -> str:
    """``Sources: [1] warranty.md — Warranty; [2] returns.html``, or "" when there are none:
    how the text channels show a reply's sources."""
    if not sources:
        return ""
    return "Sources: " + "; ".join(f"[{s.n}] {s.label}" for s in sources)


@dataclass(frozen=True, slots=True)
class FinalText:
    """The complete reply. ``complete`` is False when generation was cut short."""

    text: str
    complete: bool = True
    #: The passages of a reply grounded in a knowledge base (those it cites as [n], else all
    #: it was given): channels show them after the text (:func:`sources_line`); they are not
    #: part of ``text``, nor of the stored turn (whose meta keeps the passages).
    sources: tuple[Source, ...] = ()


@dataclass(frozen=True, slots=True)
class ImageReply:
    data: bytes
    mime_type: str
    prompt: str


NoticeKind = Literal["info", "warning", "error"]


@dataclass(frozen=True, slots=True)
class Notice:
    """A message from the bot itself (command output, errors), not from the model.

    ``progress`` names work under way that the channel may show as an activity (e.g. Telegram's
    "upload_photo" while ``"image"`` is being generated, "typing" while the reply is
    ``"queued"`` behind others for the model).
    """

    text: str
    kind: NoticeKind = "info"
    progress: Literal["image", "queued"] | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


ReplyEvent = TextDelta | FinalText | ImageReply | Notice


@dataclass(frozen=True, slots=True)
class Picture:
    """A picture ready for a model: normalised (JPEG or PNG, upright, bounded size) by
    :mod:`bot.pictures`. ``source`` is where it came from; ``sha256`` is of the source file's
    bytes (what history records to find it again)."""

    data: bytes = field(repr=False)
    mime_type: str
    width: int
    height: int
    source: str
    sha256: str


@dataclass(slots=True)
class Message:
    """A chat message in the shape models take: instruction (system), user or assistant.

    ``pictures`` go with a user message to a model that can see (FMBOT_VISION_MODEL)."""

    role: Literal["system", "user", "assistant"]
    text: str
    meta: dict[str, object] = field(default_factory=dict)
    pictures: tuple[Picture, ...] = ()

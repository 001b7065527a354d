"""The chat commands every channel shares: ``/help``, ``/new``, ``/mode``, ``/usage``, ``/forget``.

Each command is a function of the chat it runs in (:class:`Chat`: the store, the templates and
the limits the dialog manager runs on) that answers one notice. ``/image`` is not here: it is a
turn of the manager (it streams progress and a picture).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from bot.events import Incoming, Notice
from bot.limits import Limits
from bot.pictures import Pictures
from bot.prompts.library import PromptLibrary
from bot.prompts.template import PromptTemplate
from bot.stores.base import DialogStore

HELP = """Commands:
/help — this list
/new — start a fresh conversation (the template stays)
/mode — list prompt templates; /mode NAME — switch to one
/image PROMPT — generate a picture
/usage — tokens and images used in this chat
/forget — delete everything stored about this chat"""

_USAGE_KEYS = ("input_tokens", "output_tokens", "images")


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    arg: str


def parse_command(text: str) -> Command | None:
    """``/name arg`` (also ``/name@botname arg``, as Telegram sends in groups)."""
    if not text.startswith("/") or len(text) < 2 or text[1].isspace():
        return None
    head, _, arg = text[1:].partition(" ")
    return Command(head.split("@", 1)[0].lower(), arg.strip())


class Chat(Protocol):
    """What a command works with (the dialog manager provides it)."""

    store: DialogStore
    prompts: PromptLibrary
    limits: Limits | None
    pictures: Pictures

    async def mode_of(self, chat: str) -> PromptTemplate: ...


async def help_(chat: Chat, incoming: Incoming, arg: str) -> Notice:
    return Notice(HELP)


async def new(chat: Chat, incoming: Incoming, arg: str) -> Notice:
    await chat.store.reset(incoming.chat)
    return Notice("Started a new conversation.")


async def usage(chat: Chat, incoming: Incoming, arg: str) -> Notice:
    state = await chat.store.get_state(incoming.chat)
    used = {k: int(state.get(f"usage_{k}", "0")) for k in _USAGE_KEYS}
    total = used["input_tokens"] + used["output_tokens"]
    text = (
        f"Used in this chat: {used['input_tokens']} input + {used['output_tokens']} output "
        f"= {total} tokens; {used['images']} images."
    )
    limits = chat.limits
    if limits is not None and limits.active:
        status = await limits.status(incoming.user or incoming.chat)
        text += "\n" + limits.describe(status)
        if incoming.admin:
            text += " (admin: limits do not apply)"
    return Notice(text)


async def forget(chat: Chat, incoming: Incoming, arg: str) -> Notice:
    await chat.store.delete(incoming.chat)
    await chat.pictures.forget(incoming.chat)
    text = "Deleted everything stored about this chat: history, pictures, template and usage."
    kept = [chat.store.kept_after_delete()]
    if chat.limits is not None:
        # Limits count per user (the sender) and must survive /forget, else it would reset
        # a budget; they are kept under a pseudonym (bot.limits), so only old keys go here.
        await chat.limits.forget(incoming.user or incoming.chat)
        kept.append(chat.limits.kept_after_forget())
    return Notice(" ".join([text, *filter(None, kept)]))


async def mode(chat: Chat, incoming: Incoming, arg: str) -> Notice:
    current = await chat.mode_of(incoming.chat)
    if not arg:
        lines = [
            f"{'*' if t.name == current.name else ' '} {t.name} — {t.description}"
            for t in chat.prompts.modes()
        ]
        return Notice("Templates (/mode NAME to switch):\n" + "\n".join(lines))
    template = chat.prompts.mode(arg)
    if template is None:
        names = ", ".join(t.name for t in chat.prompts.modes())
        # A name is short: echo only the start of whatever was typed.
        shown = arg if len(arg) <= 64 else arg[:64] + "…"
        return Notice(f"No template named {shown!r}. Available: {names}.", "warning")
    await chat.store.set_state(incoming.chat, mode=template.name)
    return Notice(f"Switched to {template.name!r}: {template.description}")


COMMANDS: dict[str, Callable[[Chat, Incoming, str], Awaitable[Notice]]] = {
    "help": help_,
    "start": help_,
    "new": new,
    "mode": mode,
    "usage": usage,
    "forget": forget,
}

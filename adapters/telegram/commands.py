"""The command menu registered with setMyCommands, and the Telegram-only help lines."""

from __future__ import annotations

from aiogram.types import BotCommand

MENU = (
    BotCommand(command="help", description="What this bot can do"),
    BotCommand(command="new", description="Start a fresh conversation"),
    BotCommand(command="mode", description="Choose a prompt template"),
    BotCommand(command="image", description="Draw a picture: /image PROMPT"),
    BotCommand(command="stop", description="Stop the reply in progress"),
    BotCommand(command="usage", description="Tokens used in this chat"),
    BotCommand(command="forget", description="Delete everything stored about this chat"),
)

#: Commands this bot answers; in groups, any other bare ``/cmd`` belongs to another bot.
KNOWN = frozenset({"start", *(c.command for c in MENU)})

#: Handled by the channel itself, not by the dialog manager.
EXTRA_HELP = "/stop — stop the reply in progress (the part already written stays)"

GROUP_HINT = "In groups, mention me or reply to one of my messages."

#: Commands that reset or reconfigure the whole chat's conversation.
SHARED_STATE = frozenset({"new", "forget", "mode"})


def with_extras(help_text: str, private: bool) -> str:
    lines = [help_text.rstrip()]
    if "/stop" not in help_text:
        lines.append(EXTRA_HELP)
    if not private:
        lines.append(GROUP_HINT)
    return "\n".join(lines)

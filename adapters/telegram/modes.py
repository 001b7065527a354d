"""The /mode inline keyboard: one button per prompt template, current one ticked."""

from __future__ import annotations

from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

from bot.prompts.template import PromptTemplate

PREFIX = "mode:"
_DATA_LIMIT = 64  # bytes of callback_data Telegram accepts


def keyboard(templates: list[PromptTemplate], current: str) -> InlineKeyboardMarkup | None:
    rows = [
        [
            InlineKeyboardButton(
                text=("✓ " if t.name == current else "") + t.name, callback_data=PREFIX + t.name
            )
        ]
        for t in templates
        if len((PREFIX + t.name).encode()) <= _DATA_LIMIT  # longer names: /mode NAME
    ]
    return InlineKeyboardMarkup(inline_keyboard=rows) if rows else None


def listing(templates: list[PromptTemplate], current: str) -> str:
    lines = [f"{'✓' if t.name == current else '•'} {t.name} — {t.description}" for t in templates]
    return "Choose a template (or /mode NAME):\n" + "\n".join(lines)


def switching(name: str) -> str:
    """The button's immediate answer; the menu is edited with the outcome once it is done."""
    return f"Switching to {name}…"


def chosen(data: str | None) -> str | None:
    if data is None or not data.startswith(PREFIX):
        return None
    return data.removeprefix(PREFIX) or None

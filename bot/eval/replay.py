"""``fmbot eval replay``: one stored turn of a real conversation run again with another template
version, its history as the bot saw it (the stored turns before it, FMBOT_HISTORY's last ones).

History is not trimmed to the model's context window here (that needs the model's tokenizer and
the running bot's budget); a turn whose history does not fit fails with the model's error.

A template with ``knowledge:`` gets the passages the stored reply was given (the assistant turn
keeps their knowledge base, chunk id and a digest of their text; read again from the knowledge
base); when they are gone or changed (the file was indexed again), the turn had none or was
stored without digests, passages are retrieved as the bot would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from bot.dialog import passages_of, template_passages
from bot.errors import ConfigError, FmbotError
from bot.events import Message
from bot.kb.index import Hit
from bot.kb.retrieval import Retriever
from bot.models.base import GenerationOptions, TextModel
from bot.prompts.render import build_messages
from bot.prompts.source import parse_yaml_file
from bot.prompts.template import PromptTemplate
from bot.stores.base import DialogStore


@dataclass(frozen=True, slots=True)
class StoredTurn:
    number: int  # 1-based, among the chat's user turns
    message: str
    history: list[Message]
    stored_reply: str | None
    stored_template: str | None
    #: The passages the stored reply was given (its ``knowledge`` meta), if any.
    stored_passages: tuple[object, ...] = ()


@dataclass(frozen=True, slots=True)
class Replayed:
    turn: StoredTurn
    reply: str | None
    error: str | None


async def stored_turn(
    store: DialogStore, chat: str, number: int | None, history_messages: int
) -> StoredTurn:
    turns = await store.read(chat)
    asked = [i for i, t in enumerate(turns) if t.role == "user"]
    if not asked:
        raise ConfigError("CHAT", chat, "it has no stored turns; `fmbot history` lists chats")
    if number is None:
        number = len(asked)
    if not 1 <= number <= len(asked):
        raise ConfigError("--turn", number, f"chat {chat!r} has user turns 1 to {len(asked)}")
    at = asked[number - 1]
    before = turns[:at][-history_messages:] if history_messages else []
    answer = turns[at + 1] if at + 1 < len(turns) and turns[at + 1].role == "assistant" else None
    mode = turns[at].meta.get("mode")
    used = answer.meta.get("knowledge") if answer is not None else None
    return StoredTurn(
        number=number,
        message=turns[at].text,
        history=[Message(t.role, t.text) for t in before],
        stored_reply=None if answer is None else answer.text,
        stored_template=mode if isinstance(mode, str) else None,
        stored_passages=tuple(used) if isinstance(used, list) else (),
    )


async def turn_passages(
    retriever: Retriever, template: PromptTemplate, turn: StoredTurn
) -> tuple[tuple[Hit, ...], str]:
    """The passages to replay ``turn`` with, and a line saying where they came from."""
    if turn.stored_passages:
        hits = await retriever.stored(turn.stored_passages)
        if hits is not None:
            return hits, f"passages: the {len(hits)} the stored reply was given"
        why = "the stored reply's passages are no longer in their knowledge bases as they were"
    else:
        why = "the stored reply was given none"
    hits = await template_passages(retriever, template, turn.message, turn.history)
    return hits, f"passages: {len(hits)} retrieved again ({why})"


async def replay(
    turn: StoredTurn,
    template: PromptTemplate,
    model: TextModel,
    options: GenerationOptions,
    variables: dict[str, object],
    hits: tuple[Hit, ...] = (),
) -> Replayed:
    messages = build_messages(
        template,
        turn.message,
        turn.history,
        variables,
        knowledge=passages_of(hits),
        stable_prefix=model.reuses_prompt_prefix,
    )
    try:
        reply = await model.respond(messages, options)
    except FmbotError as exc:
        return Replayed(turn, None, str(exc))
    return Replayed(turn, reply, None)


def append_case(suite: Path, message: str) -> None:
    """Add ``{message: ...}`` to the suite's inline cases, keeping the file as written (comments,
    order): a line is inserted after the last case. ConfigError when that cannot be done."""
    data, smap = parse_yaml_file(suite, "an eval suite")
    node = smap.root.value if smap.root is not None else []
    cases = next((v for k, v in node if getattr(k, "value", None) == "cases"), None)
    if not isinstance(data.get("cases"), list) or cases is None or cases.flow_style:
        raise ConfigError(
            "--add-to",
            str(suite),
            "its cases are not a block list (`cases:` then `- message: ...` lines); add the "
            "case by hand, or to the cases table",
        )
    lines = suite.read_text(encoding="utf-8-sig").splitlines(keepends=True)
    # After the last item's last value: a block node's own end mark lies past the comments and
    # blank lines that follow it, which belong to whatever comes next.
    leaf = cases
    while isinstance(leaf, yaml.CollectionNode) and not leaf.flow_style and leaf.value:
        last_item = leaf.value[-1]
        leaf = last_item[1] if isinstance(leaf, yaml.MappingNode) else last_item
    end = leaf.end_mark
    at = end.line if end.column == 0 else end.line + 1
    indent = " " * cases.start_mark.column
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    entry = f"{indent}- message: {json.dumps(message, ensure_ascii=False)}\n"
    lines.insert(min(at, len(lines)), entry)
    suite.write_text("".join(lines), encoding="utf-8")

"""The aiogram router: messages, the /mode keyboard, and the draft stop button.

Everything the user types goes to the dialog manager (commands included), except what only
the channel can do: /stop, the /mode keyboard, access checks and the group addressing rule.
Photos and image files (an album's all together) go to it as pictures, by ``file_id``
(:mod:`adapters.telegram.pictures`).

What the handlers send themselves (refusals, short answers, /help, the /mode menu, button
answers) goes through :func:`~adapters.telegram.outbox.refusal_logged`: a chat that refuses it
(the user blocked the bot, no right to write in the group) ends the update, not the queue job's
retries.
"""

from __future__ import annotations

import logging

from aiogram import Bot, Router
from aiogram.types import CallbackQuery, Message, MessageGenerationStopped, User

from adapters.telegram.access import ADMINS_ONLY, REFUSAL, AccessPolicy, Sender
from adapters.telegram.addressing import addressed, strip_mention
from adapters.telegram.commands import SHARED_STATE, with_extras
from adapters.telegram.modes import chosen, keyboard, listing, switching
from adapters.telegram.outbox import refusal_logged
from adapters.telegram.pictures import Found, pictures_of
from adapters.telegram.replies import Replies
from adapters.telegram.splitting import TEXT_LIMIT, Part, truncate
from adapters.telegram.target import Target
from bot.commands import parse_command
from bot.dialog import DialogManager
from bot.errors import FmbotError
from bot.events import Incoming, Notice

log = logging.getLogger(__name__)

NOTHING_TO_STOP = "Nothing to stop: no reply is in progress here."
EMPTY_MENTION = "Yes? Ask me anything, or send /help."
MENU_GONE = "This menu is no longer available; send /mode again."
_UNSUPPORTED = (
    ("sticker", "Nice sticker! I can only read text, though. Please type your message."),
    ("voice", "I can't listen to voice messages yet. Please type your message instead."),
    ("audio", "I can't listen to audio yet. Please type your message instead."),
    ("video_note", "I can't watch video messages yet. Please type your message instead."),
    ("document", "I can't open files yet. Please paste the text into a message."),
    ("video", "I can't watch videos yet. Please type your message instead."),
    ("animation", "I can't watch GIFs. Please type your message instead."),
    ("location", "I can't use locations. Please type your message instead."),
    ("contact", "I can't use contacts. Please type your message instead."),
    ("poll", "I can't answer polls. Please type your message instead."),
)


def unsupported_reply(message: Message) -> str | None:
    """The answer to a message that is not text; None for service messages (joins, pins)."""
    for attribute, answer in _UNSUPPORTED:
        if getattr(message, attribute, None):
            return answer
    return None


class Handlers:
    def __init__(self, manager: DialogManager, replies: Replies, policy: AccessPolicy) -> None:
        self.manager = manager
        self.replies = replies
        self.policy = policy
        self.outbox = replies.outbox

    def router(self) -> Router:
        router = Router(name="fmbot-telegram")
        router.message.register(self.on_message)
        router.callback_query.register(self.on_callback)
        router.stopped_message_generation.register(self.on_generation_stopped)
        return router

    async def on_message(
        self, message: Message, bot: Bot, album: list[Message] | None = None
    ) -> None:
        """``album``: every message of a media group, in order (see :mod:`.albums`)."""
        me = await bot.me()  # cached by aiogram after the first call
        messages = album or [message]
        message = messages[0]
        target = Target.of(message)
        # An album's caption (and so a mention) is on one of its messages; a reply, on each.
        if not target.private and not any(addressed(m, me) for m in messages):
            return  # before any download: a picture not meant for us is never fetched
        sender = Sender.of(message)
        if not self.policy.allows(sender.user):
            if sender.user is None:
                # Sent on behalf of a chat: no user to check or to tell the bot is private.
                log.info("ignored a message sent on behalf of a chat (chat %s)", target.chat_id)
                return
            log.info("refused a message from a user who is not allowed (chat %s)", target.chat_id)
            await self._say(target, REFUSAL, "a refusal")
            return
        found = pictures_of(messages)
        if found is not None:
            await self._pictures(target, messages, found, me, sender)
            return
        if message.text is None:
            answer = unsupported_reply(message)
            if answer is not None:
                await self._say(target, answer, "the unsupported-message answer")
            return
        text = message.text.strip() if target.private else strip_mention(message.text, me)
        if not text:
            await self._say(target, EMPTY_MENTION, "the empty-mention answer")
            return
        await self._text(target, text, sender)

    async def _say(self, target: Target, text: str, what: str) -> None:
        """Bot-authored text; a refusal to take it is final (see the module docstring)."""
        with refusal_logged(target.chat_id, what):
            await self.outbox.send_text(target, text)

    async def _pictures(
        self, target: Target, messages: list[Message], found: Found, me: User, sender: Sender
    ) -> None:
        """Photos or image files, with the caption as the question (the template's default
        request when there is none). The manager fetches them when it runs the turn."""
        if found.problem is not None:  # worded as the manager's picture warnings are
            await self._say(target, "⚠️ " + found.problem, "a picture warning")
            return
        caption = "\n".join(m.caption for m in messages if m.caption)
        question = caption.strip() if target.private else strip_mention(caption, me)
        admin = self.policy.is_admin(sender.user)
        incoming = Incoming(target.key, question, sender.label, admin, pictures=found.sources)
        await self.replies.run(target, incoming)

    async def _text(self, target: Target, text: str, sender: Sender) -> None:
        command = parse_command(text)
        name = command.name if command is not None else None
        user = sender.user
        if name == "stop":
            if not self.replies.stop(target.key):
                await self._say(target, NOTHING_TO_STOP, "the /stop answer")
            return
        if command is not None and name == "mode" and not command.arg:
            await self._mode_menu(target)
            return
        if name in SHARED_STATE and not self.policy.may_change_shared(user, target.private):
            await self._say(target, ADMINS_ONLY, "the admins-only answer")
            return
        if name in ("help", "start"):
            notices = await self._ask(target.key, text)
            await self._say(target, with_extras("\n".join(notices), target.private), "/help")
            return
        admin = self.policy.is_admin(user)
        await self.replies.run(target, Incoming(target.key, text, sender.label, admin))

    async def _ask(self, key: str, text: str) -> list[str]:
        """A command's notices, collected (for output the channel adds to)."""
        events = self.manager.handle(Incoming(key, text))
        return [e.text async for e in events if isinstance(e, Notice)]

    async def _mode_menu(self, target: Target) -> None:
        try:
            current = (await self.manager.mode_of(target.key)).name
        except FmbotError:  # no usable template or no store: let the manager explain
            await self.replies.run(target, Incoming(target.key, "/mode"))
            return
        templates = self.manager.prompts.modes()
        with refusal_logged(target.chat_id, "the /mode menu"):
            await self.outbox.send(
                target,
                Part(truncate(listing(templates, current), TEXT_LIMIT)),
                markup=keyboard(templates, current),
            )

    async def on_callback(self, query: CallbackQuery) -> None:
        # CallbackQuery.from is always the user who pressed (no sender_chat here).
        name = chosen(query.data)
        message = query.message
        chat_id = message.chat.id if message is not None else 0
        if name is None or not isinstance(message, Message):
            await self._answer(query, chat_id, MENU_GONE)
            return
        target = Target.of(message)
        if not self.policy.allows(query.from_user):
            await self._answer(query, chat_id, REFUSAL, alert=True)
            return
        if not self.policy.may_change_shared(query.from_user, target.private):
            await self._answer(query, chat_id, ADMINS_ONLY, alert=True)
            return
        template = self.manager.prompts.mode(name)
        if template is None:  # a template removed since the menu was sent
            await self._answer(query, chat_id, MENU_GONE)
            return
        # Answered before the switch: the switch waits for the chat's running turn (it holds
        # the chat's lock until its reply is delivered), and Telegram gives up on a button
        # answered seconds later ("query is too old") while the button spins meanwhile.
        await self._answer(query, chat_id, truncate(switching(template.name), 200))
        outcome = "\n".join(await self._ask(target.key, f"/mode {template.name}"))
        try:
            current = (await self.manager.mode_of(target.key)).name
        except FmbotError:  # e.g. the store went away: say so in place of the menu
            menu, markup = Part(truncate(outcome, TEXT_LIMIT)), None
        else:
            templates = self.manager.prompts.modes()
            menu = Part(truncate(f"{outcome}\n\n{listing(templates, current)}", TEXT_LIMIT))
            markup = keyboard(templates, current)
        with refusal_logged(chat_id, "the /mode menu"):
            await self.outbox.edit(target, message.message_id, menu, markup=markup)

    @staticmethod
    async def _answer(query: CallbackQuery, chat_id: int, text: str, alert: bool = False) -> None:
        with refusal_logged(chat_id, "a button answer"):  # e.g. 400 "query is too old"
            await query.answer(text, show_alert=alert)

    async def on_generation_stopped(self, event: MessageGenerationStopped) -> None:
        if not self.replies.stop_draft(event.chat.id, event.draft_id):
            log.debug("stop pressed for draft %s, which is no longer running", event.draft_id)

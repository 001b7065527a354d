"""The dialog manager: the one transport-neutral entry point every channel feeds.

``DialogManager.handle(incoming)`` yields reply events (text deltas, the final text, images,
notices). It owns the chat's turn: lock, state, prompt, trimming, model call and storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from bot.busy import BusyGate, BusyPolicy
from bot.commands import COMMANDS, parse_command
from bot.context import fit_to_window
from bot.errors import (
    ContextOverflowError,
    FmbotError,
    GivenUpError,
    KnowledgeError,
    ModelError,
    NotSavedError,
    PictureError,
    PromptError,
    StoreError,
)
from bot.events import (
    FinalText,
    ImageReply,
    Incoming,
    Message,
    Notice,
    Picture,
    ReplyEvent,
    Source,
    TextDelta,
    Usage,
)
from bot.kb.index import Hit
from bot.kb.retrieval import Retriever, cited_numbers, hit_records
from bot.limits import Limits
from bot.locks import ChatLocks
from bot.models.base import GenerationOptions, ImageModel, Response, TextModel
from bot.observe import metrics
from bot.pictures import Pictures, picture_refs
from bot.prompts.library import PromptLibrary
from bot.prompts.render import Passage, build_messages
from bot.prompts.template import PromptTemplate
from bot.routing import ImageIntentClassifier, RuleClassifier
from bot.stores.base import DialogStore, Turn

log = logging.getLogger(__name__)
T = TypeVar("T")

IMAGE_SETUP_HINT = (
    "No image model is configured, so I cannot draw. Set FMBOT_IMAGE_MODEL, e.g. "
    "FMBOT_IMAGE_MODEL=yandex:yandex-art/latest (with YANDEX_API_KEY and YANDEX_FOLDER_ID) or "
    "FMBOT_IMAGE_MODEL=openai:dall-e-3 (with OPENAI_API_KEY), and restart the bot."
)
VISION_SETUP_HINT = (
    "No vision model is configured, so I cannot look at pictures. Set FMBOT_VISION_MODEL, e.g. "
    "FMBOT_VISION_MODEL=yandex:gemma-3-27b-it/latest (with YANDEX_API_KEY and YANDEX_FOLDER_ID) "
    "or FMBOT_VISION_MODEL=openai:gpt-4o-mini (with OPENAI_API_KEY), and restart the bot. "
    "Meanwhile, describe the picture in words."
)
LOST_PICTURE = (
    "I could not get the picture you sent earlier again, so this answer does not see it. "
    "Send it again to ask about it."
)
IMAGE_PROMPT_TEMPLATE = "image-prompt"
QUEUED_NOTICE_AFTER = (
    3.0  # s without a first word, while the model answers others, before saying so
)
IMAGE_PROMPT_LIMIT = 500  # YandexART's limit; a sane bound for other services too
#: Times a turn is sent again with less history when the server refuses its prompt as longer
#: than its context window (our token count undercounts its tokenizer, or the window is set
#: larger than the server's).
OVERFLOW_RETRIES = 2
#: The share of what the server's refusal says fits that a retry fills: its count per token of
#: ours varies from message to message.
OVERFLOW_MARGIN = 0.9


class _Overflow(Exception):
    """Raised by :meth:`DialogManager._reply` for a refusal to retry with less history."""

    def __init__(self, error: ContextOverflowError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True, slots=True)
class _Prompt:
    """What a text turn sends the model: built from the template, history and message."""

    template: PromptTemplate
    messages: list[Message]
    options: GenerationOptions
    input_tokens: int
    #: The text model, or the vision model when a message of the prompt carries pictures.
    model: TextModel
    #: The user message as stored (a picture's default request when it came without a caption)
    #: and the pictures it brought.
    request: str
    pictures: tuple[Picture, ...] = ()
    #: Passages retrieved from the template's knowledge bases, numbered as the prompt shows.
    hits: tuple[Hit, ...] = ()
    #: (gone, of): earlier pictures of a message in the prompt that could not be had again.
    lost_pictures: tuple[int, int] | None = None
    #: The digests of those found gone by this turn: stored with it (``pictures_lost``), so
    #: later turns neither fetch them nor tell of them again.
    newly_lost: tuple[str, ...] = ()
    #: How many history messages the prompt carries (what a retry after an overflow can drop).
    history: int = 0


class DialogManager:
    def __init__(
        self,
        store: DialogStore,
        model: TextModel,
        prompts: PromptLibrary,
        *,
        options: GenerationOptions | None = None,
        default_mode: str = "default",
        history_turns: int = 200,  # stored turns (messages) read for the prompt
        image_model: ImageModel | None = None,
        classifier: ImageIntentClassifier | None = None,
        rewrite_image_prompts: bool = True,
        busy_policy: BusyPolicy = BusyPolicy.QUEUE,
        limits: Limits | None = None,
        vision_model: TextModel | None = None,
        pictures: Pictures | None = None,
        retriever: Retriever | None = None,
    ) -> None:
        self.store = store
        self.model = model
        self.prompts = prompts
        self.options = options or GenerationOptions(max_tokens=512)
        self.default_mode = default_mode
        self.history_turns = history_turns
        self.image_model = image_model
        self.classifier = classifier or RuleClassifier()
        self.rewrite_image_prompts = rewrite_image_prompts
        self.busy = BusyGate(busy_policy)
        self.limits = limits
        self.vision_model = vision_model
        #: Fetches and normalises the pictures of a turn; a channel registers its own sources.
        self.pictures = pictures or Pictures()
        #: Finds the passages of templates with ``knowledge:``; None: such templates fail.
        self.retriever = retriever
        self.locks = ChatLocks()
        #: Set by a caller that runs a message again when the store fails (a queue worker: the
        #: job stays queued): a StoreError before the reply began is raised to it instead of
        #: answered with "send it again". A failed save after the reply is still a notice, and
        #: then NotSavedError (the queue sets the job aside rather than answer it twice).
        self.raise_store_errors = False
        #: Seconds without a first word, while the model finishes other replies, before the
        #: user is told the message is in line.
        self.queued_notice_after = QUEUED_NOTICE_AFTER
        #: The channel label of this manager's turns in metrics and logs (set by the channel).
        self.channel = "other"

    async def handle(self, incoming: Incoming) -> AsyncGenerator[ReplyEvent, None]:
        """Answer one message. Errors become Notice events; nothing escapes but cancellation."""
        # A caption is a question about the picture, never a command.
        command = None if incoming.pictures else parse_command(incoming.text)
        chat = incoming.chat
        try:
            if command is not None and (command.name in COMMANDS or command.name == "image"):
                async with self.locks(chat):
                    if command.name in COMMANDS:
                        yield await COMMANDS[command.name](self, incoming, command.arg)
                        return
                    with metrics.Metered(chat, self.channel) as metered:
                        if refusal := await self._refusal(incoming):
                            yield refusal
                            return
                        async with contextlib.aclosing(self._image(incoming, command.arg)) as evs:
                            async for event in evs:
                                yield event
                                metrics.resume(metered)  # resumed perhaps in another context
                return
            ticket = self.busy.arrive(incoming)
            try:
                async with self.locks(chat):
                    turn = self.busy.take(ticket)
                    if turn is None:
                        return  # answered together with an earlier message (busy policy)
                    with metrics.Metered(chat, self.channel) as metered:
                        if refusal := await self._refusal(turn):
                            yield refusal
                            return
                        # aclosing: if our caller stops early, the turn (and the model) stop too.
                        with self.busy.running(chat) as interrupted:
                            run = self._turn(turn, interrupted, ticket.context)
                            async with contextlib.aclosing(run) as events:
                                async for event in events:
                                    yield event
                                    metrics.resume(metered)  # resumed perhaps in another context
            finally:
                self.busy.leave(ticket)
        except StoreError as exc:
            if self.raise_store_errors or isinstance(exc, GivenUpError):
                # The queue's retry loop counts a Redis error it gets; a GivenUpError is no
                # Redis error but a job given up with its partition (a lease loss, counted so).
                raise
            metrics.store_error(exc)
            log.error("store failed for chat %s: %s", chat, exc)
            yield Notice(
                "The service is temporarily unavailable (the conversation store cannot be "
                f"reached), so this message was not answered. Please send it again in a moment. "
                f"({exc})",
                "error",
            )
        except FmbotError as exc:
            # E.g. every template file was removed while running: say so, keep the channel alive.
            log.error("turn failed for chat %s: %s", chat, exc)
            yield Notice(f"This message could not be answered: {exc}", "error")

    async def _refusal(self, incoming: Incoming) -> Notice | None:
        """A refusal when the user is over a limit (admins never are)."""
        if self.limits is None or not self.limits.active or incoming.admin:
            return None
        refusal = await self.limits.admit(incoming.user or incoming.chat)
        if not refusal:
            return None
        metrics.turn_status("limited")
        return Notice(refusal, "warning")

    async def aclose(self) -> None:
        """Close the store and the classifier. Models are shared per process: see registry."""
        await self.classifier.aclose()
        if self.retriever is not None:
            await self.retriever.aclose()
        await self.store.aclose()

    async def mode_of(self, chat: str) -> PromptTemplate:
        """The chat's template; falls back to the default when its file was removed."""
        return self._template_for(await self.store.get_state(chat))

    def _template_for(self, state: dict[str, str]) -> PromptTemplate:
        name = state.get("mode", self.default_mode)
        template = self.prompts.get(name) or self.prompts.get(self.default_mode)
        if template is None:
            raise PromptError(
                f"no template named {self.default_mode!r} in {self.prompts.directory}: "
                "add one or set FMBOT_DEFAULT_MODE"
            )
        return template

    def options_for(self, template: PromptTemplate) -> GenerationOptions:
        """The template's options over the defaults; the configured max_tokens is a ceiling.
        Public for the web playground, which runs a template on a model as a turn would."""
        options = self.options.merged(template.options)
        ceiling = self.options.max_tokens
        if ceiling and options.max_tokens and options.max_tokens > ceiling:
            options = options.model_copy(update={"max_tokens": ceiling})
        return options

    async def _wants_image(self, text: str, template: PromptTemplate) -> bool:
        # Without an image model every message is for the text model; /image explains how to
        # configure one. (Routing here would refuse "draw up a contract" and the like.)
        if not template.allow_images or self.image_model is None:
            return False
        return await self.classifier(text)

    async def _turn(
        self, incoming: Incoming, interrupted: asyncio.Event, context: contextvars.Context
    ) -> AsyncGenerator[ReplyEvent, None]:
        """A text turn, as its steps: load the chat, route (a request for a picture becomes an
        image turn), build the prompt, then generate, streamed, and save (:meth:`_reply`). The
        admission (limits) and the busy gate come before, in :meth:`handle`."""
        if incoming.pictures and self.vision_model is None:
            metrics.turn_status("refused")
            yield Notice(VISION_SETUP_HINT, "warning")  # before any download: nothing can see it
            return
        try:
            with metrics.step("fmbot history read"):
                state, history = await self._load(incoming.chat)
            template = self._template_for(state)
            if not incoming.pictures and await self._wants_image(incoming.text, template):
                image = self._image_turn(incoming, incoming.text, rewrite=True, context=context)
                async with contextlib.aclosing(image) as events:
                    async for event in events:
                        yield event
                return
            pictures = await self._pictures_of(incoming)
            hits = await self._knowledge(template, incoming.text, history)
            with metrics.step("fmbot prompt build"):
                prompt = await self._build(
                    incoming.chat, template, history, incoming.text, pictures, hits
                )
        except PictureError as exc:
            metrics.turn_status("refused")
            yield Notice(str(exc), "warning")  # no model call: the chat goes on
            return
        except (PromptError, ModelError, KnowledgeError) as exc:
            yield Notice(str(exc), "error")
            return
        told_lost = False
        for retries_left in range(OVERFLOW_RETRIES, -1, -1):
            if prompt.lost_pictures and not told_lost:
                # Said, not passed over: the answer would otherwise read as if it saw them.
                yield Notice(_lost_text(*prompt.lost_pictures), "warning")
                told_lost = True
            reply = self._reply(incoming, prompt, interrupted, context, retry=retries_left > 0)
            try:
                async with contextlib.aclosing(reply) as events:
                    async for event in events:
                        yield event
                return
            except _Overflow as overflow:
                # The server counts more tokens than we do: the same history would be refused
                # on every later message too. Answer from the recent history that fits it.
                limit = _smaller_input(prompt, overflow.error)
                log.warning(
                    "chat %s: %s refused a prompt of %d tokens by our count as too long (it "
                    "counts %s, takes %s); sending it again within %d, with less history",
                    incoming.chat, prompt.model.name, prompt.input_tokens,
                    overflow.error.needed or "?", overflow.error.available or "?", limit,
                )  # fmt: skip
            try:
                with metrics.step("fmbot prompt build"):
                    prompt = await self._rebuild(incoming, prompt, template, history, hits, limit)
            except (PromptError, ModelError, KnowledgeError, PictureError) as exc:
                yield Notice(str(exc), "error")
                return

    async def _rebuild(
        self,
        incoming: Incoming,
        refused: _Prompt,
        template: PromptTemplate,
        history: list[Message],
        hits: tuple[Hit, ...],
        limit: int,
    ) -> _Prompt:
        """``refused``'s turn within ``limit`` tokens by our count; without history when even
        the message alone exceeds it (the server is the judge of that one)."""
        text, pictures = incoming.text, refused.pictures
        try:
            prompt = await self._build(
                incoming.chat, template, history, text, pictures, hits, limit
            )
        except ContextOverflowError:
            prompt = await self._build(incoming.chat, template, [], text, pictures, hits)
        # Pictures found gone are stored as such even if their message is now left out.
        gone = tuple(dict.fromkeys((*refused.newly_lost, *prompt.newly_lost)))
        return dataclasses.replace(prompt, newly_lost=gone)

    async def _load(self, chat: str) -> tuple[dict[str, str], list[Message]]:
        """The chat's state and history, in one round trip where the store can."""
        state, stored = await self.store.load(chat, last=self.history_turns)
        # A retention cap can cut a pair in half: history must start with the user.
        while stored and stored[0].role != "user":
            stored.pop(0)
        return state, [_message(t) for t in stored]

    async def _knowledge(
        self, template: PromptTemplate, text: str, history: Sequence[Message]
    ) -> tuple[Hit, ...]:
        """Passages for ``text`` from the template's knowledge bases (none without them: a turn
        of a template without ``knowledge`` pays nothing)."""
        if not template.knowledge or not text.strip():
            return ()
        if self.retriever is None:
            raise KnowledgeError(
                f"Template {template.name!r} answers from knowledge bases, which this bot was "
                "started without; choose another template with /mode."
            )
        return await template_passages(self.retriever, template, text, history)

    async def _pictures_of(self, incoming: Incoming) -> tuple[Picture, ...]:
        """The message's pictures, fetched and normalised; PictureError says which failed."""
        return tuple(
            [await self.pictures.get(incoming.chat, source) for source in incoming.pictures]
        )

    def _earlier_pictures(
        self, history: list[Message], new_pictures: bool
    ) -> tuple[int, list[dict[str, object]], int] | None:
        """Where the chat's most recent pictures are in history, the references of those still
        to be had, and how many the message brought: they go with it, so follow-up questions
        can be about them. A new picture replaces them; so does /new (history starts again).
        Those a later turn found gone (its ``pictures_lost``) are left out: told once, and not
        fetched again (for Telegram, a getFile and a download each turn)."""
        if self.vision_model is None or new_pictures:
            return None
        lost: set[str] = set()
        for index in range(len(history) - 1, -1, -1):
            meta = history[index].meta
            if isinstance(gone := meta.get("pictures_lost"), list):
                lost.update(g for g in gone if isinstance(g, str))
            refs = meta.get("pictures")
            if isinstance(refs, list) and refs:
                found = [ref for ref in refs if isinstance(ref, dict)]
                kept = [ref for ref in found if ref.get("sha256") not in lost]
                return (index, kept, len(found)) if kept else None
        return None

    async def _build(
        self,
        chat: str,
        template: PromptTemplate,
        history: list[Message],
        text: str,
        pictures: tuple[Picture, ...] = (),
        hits: tuple[Hit, ...] = (),
        limit: int | None = None,
    ) -> _Prompt:
        """Instruction, examples, the history that fits the window, and the message (with the
        retrieved passages). A prompt that carries pictures goes to the vision model; pictures
        trimmed away with old history leave it to the text model. ``limit``: fewer input tokens
        than the window allows, by the model's count (see :meth:`_turn`)."""
        options = self.options_for(template)
        request = text or (template.picture_request if pictures else text)
        full = build_messages(
            template,
            request,
            knowledge=passages_of(hits),
            stable_prefix=self.model.reuses_prompt_prefix,
        )
        prefix, current = full[:-1], dataclasses.replace(full[-1], pictures=pictures)
        reserve = options.max_tokens or 0
        lost: tuple[int, int] | None = None
        newly_lost: tuple[str, ...] = ()
        earlier = self._earlier_pictures(history, bool(pictures))
        if earlier is not None and self.vision_model is not None:
            # Fitted first at the pictures' fixed cost, which their references tell: pictures of
            # a message trimmed away are never fetched (a download, after a restart).
            index, refs, brought = earlier
            held = history[index]
            try:
                messages, input_tokens = await fit_to_window(
                    self.vision_model, prefix, history, current, reserve,
                    lambda m: len(refs) if m is held else len(m.pictures), limit=limit,
                )  # fmt: skip
            except ContextOverflowError:
                messages = []  # no history fits the vision model: the text model answers
            if any(m is held for m in messages):
                found = [await self.pictures.again(chat, ref) for ref in refs]
                seen = tuple(p for p in found if p is not None)
                attached = dataclasses.replace(held, pictures=seen)
                if len(seen) == len(refs):  # the cost fitted for: the same messages fit
                    messages = [attached if m is held else m for m in messages]
                    return _Prompt(
                        template, messages, options, input_tokens, self.vision_model,
                        request, pictures, hits, history=len(messages) - len(full),
                    )  # fmt: skip
                # Some are gone: fitted again below at what the rest cost.
                history = [*history[:index], attached, *history[index + 1 :]]
                lost = (brought - len(seen), brought)
                newly_lost = tuple(
                    str(r.get("sha256", "")) for r, p in zip(refs, found, strict=True) if p is None
                )
        model = self.model
        if self.vision_model is not None and any(m.pictures for m in (*history, current)):
            model = self.vision_model
        messages, input_tokens = await fit_to_window(
            model, prefix, history, current, reserve, limit=limit
        )
        if model is not self.model and not any(m.pictures for m in messages):
            plain = [_without_pictures(m) for m in history]
            model = self.model
            messages, input_tokens = await fit_to_window(
                model, prefix, plain, current, reserve, limit=limit
            )
        return _Prompt(
            template, messages, options, input_tokens, model, request, pictures, hits, lost,
            newly_lost, len(messages) - len(full),
        )  # fmt: skip

    async def _reply(
        self,
        incoming: Incoming,
        prompt: _Prompt,
        interrupted: asyncio.Event,
        context: contextvars.Context,
        *,
        retry: bool = False,
    ) -> AsyncGenerator[ReplyEvent, None]:
        """Stream the model's reply, then save the turn (also when it was stopped or failed
        part way: the user saw it) and say how it ended. ``retry``: a refusal of a prompt with
        history as too long, before any word, raises _Overflow (nothing said, nothing saved)."""
        chat = incoming.chat
        ahead = prompt.model.waiting()  # replies the model finishes before it starts this one
        metrics.turn_model(prompt.model.name, prompt.messages)  # log lines name it from here
        started = time.perf_counter()
        response = prompt.model.respond(prompt.messages, prompt.options)
        status = "stopped"  # what the turn is stored as if we are cancelled mid-stream
        failure: ModelError | None = None
        overflow: ContextOverflowError | None = None
        saved = True
        try:
            async with contextlib.AsyncExitStack() as stack:
                # Closed in reverse: until (which waits for its pending step), then the stream.
                stream = await stack.enter_async_context(contextlib.aclosing(aiter(response)))
                if self.busy.policy is BusyPolicy.INTERRUPT:  # also while no token came yet
                    stream = await stack.enter_async_context(
                        contextlib.aclosing(until(interrupted, stream))
                    )
                if ahead:
                    # The first word can be a while: say why rather than look stuck.
                    wait = self.queued_notice_after
                    first = await stack.enter_async_context(_first(stream, wait))
                    if not first.done():
                        yield Notice(_queued_text(ahead), progress="queued")
                    try:
                        delta = await first
                    except StopAsyncIteration:
                        delta = ""
                    if delta:
                        yield TextDelta(delta)
                async for delta in stream:
                    yield TextDelta(delta)
                    if interrupted.is_set():
                        break
            status = "stopped" if interrupted.is_set() else "complete"
        except ModelError as exc:
            status, failure = "interrupted", exc
            if (
                retry
                and isinstance(exc, ContextOverflowError)
                and prompt.history
                and not response.text
                and not interrupted.is_set()
            ):
                overflow = exc  # raised below, once this attempt is counted
            else:
                log.warning("model failed in chat %s: %s", chat, exc)
                if response.text:
                    yield FinalText(response.text, complete=False)
                said = _failure_text(exc, prompt)
                yield Notice(
                    f"{said} The answer was interrupted." if response.text else said, "error"
                )
        finally:
            metrics.reply_ended(
                prompt.model.name,
                status,
                partial=bool(response.text),
                started=started,
                first_at=response.first_at,
                error=failure,
                usage=response.usage,
                text=response.text,
            )
            # An interrupted turn is stored even if no word came yet: the message was read.
            if status == "complete" or response.text or interrupted.is_set():
                # Shielded: a cancelled turn still records what the user saw. Run in the context
                # of the turn's newest message (see bot.busy).
                save = self._save_turn(incoming, prompt, response, status)
                with contextlib.suppress(RuntimeError):  # the save's logs and meta: this turn
                    context.run(metrics.current_turn.set, metrics.current_turn.get())
                task = asyncio.get_running_loop().create_task(save, context=context)
                saved = await asyncio.shield(task)
        if overflow is not None:
            raise _Overflow(overflow)
        if status == "complete":
            yield FinalText(response.text, sources=cited_sources(prompt.hits, response.text))
            if not saved:
                yield Notice(
                    "This reply was not saved (the conversation store is unavailable), so the "
                    "next message will not see it.",
                    "warning",
                )
        elif status == "stopped" and interrupted.is_set():
            if response.text:
                yield FinalText(response.text, complete=False)
            yield Notice("Stopped: a newer message arrived.", "info")
        if not saved and self.raise_store_errors:
            raise NotSavedError(f"the turn of chat {chat} was answered but not stored")

    async def _save_turn(
        self, incoming: Incoming, prompt: _Prompt, response: Response, status: str
    ) -> bool:
        """Store the user/assistant pair, then account its tokens; False when the store failed."""
        # Stopped or failed streams report no usage; charge an estimate so /usage and budgets
        # cannot be dodged by interrupting (about 4 characters per token).
        usage = response.usage or Usage(prompt.input_tokens, max(1, len(response.text) // 4))
        mode = prompt.template.name
        meta: dict[str, object] = {
            "mode": mode,
            "status": status,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
        }
        if (turn := metrics.current_turn.get()) is not None:
            meta["turn"] = turn.id  # what this turn's log lines say (bot/observe/logs.py)
        asked: dict[str, object] = {"mode": mode}
        if prompt.pictures:
            asked["pictures"] = picture_refs(prompt.pictures)
            meta["model"] = prompt.model.name
        if prompt.newly_lost:
            asked["pictures_lost"] = list(prompt.newly_lost)
        if prompt.hits:  # which passages the reply was given, by their numbers
            meta["knowledge"] = hit_records(prompt.hits, text=False)
        turns = (
            Turn("user", prompt.request, meta=asked),
            Turn("assistant", response.text, meta=meta),
        )
        counters = {
            "usage_input_tokens": usage.input_tokens,
            "usage_output_tokens": usage.output_tokens,
        }
        try:
            with metrics.step("fmbot store write"):
                await self.store.append(incoming.chat, *turns, counters=counters)
        except GivenUpError:
            raise  # the worker that takes the job over answers and stores it
        except StoreError as exc:
            metrics.store_error(exc)  # the queue buries a NotSavedError without counting it
            log.error("could not save a turn of chat %s: %s", incoming.chat, exc)
            return False
        metrics.tokens(prompt.model.name, usage.input_tokens, usage.output_tokens)
        await self._account(incoming, usage.total_tokens)
        return True

    async def _account(self, incoming: Incoming, tokens: int) -> None:
        """Count a saved turn's tokens against its user's daily budget (bot.limits)."""
        if self.limits is None:
            return
        try:
            await self.limits.add_tokens(incoming.user or incoming.chat, tokens)
        except StoreError as exc:  # the turn is saved; only the daily budget misses it
            metrics.store_error(exc)
            log.error("could not count the tokens of chat %s: %s", incoming.chat, exc)

    async def _image_turn(
        self,
        incoming: Incoming,
        request: str,
        *,
        rewrite: bool,
        context: contextvars.Context | None = None,
    ) -> AsyncGenerator[ReplyEvent, None]:
        """Generate a picture for ``request``; the text model may rewrite it into a prompt first.

        The turn is stored in ``context`` (the newest message's, for a merged turn), with the
        image counted in the same write."""
        if self.image_model is None:
            metrics.turn_status("refused")
            yield Notice(IMAGE_SETUP_HINT, "warning")
            return
        prompt = request
        usage: Usage | None = None  # the rewrite's, charged with the picture
        writer = self.prompts.get(IMAGE_PROMPT_TEMPLATE) if rewrite else None
        if writer is not None and self.rewrite_image_prompts:
            try:
                messages = build_messages(writer, request)
                response = self.model.respond(messages, self.options_for(writer))
                # A model call of this turn like its answer's (counted, traced); the turn's
                # status stays the picture's.
                with metrics.ModelCall(self.model.name, messages, response):
                    rewritten = (await response).strip()
                prompt = rewritten or request
                # Estimated when the model reports none, as a text turn's (4 characters a token).
                usage = response.usage or Usage(
                    sum(len(m.text) for m in messages) // 4, max(1, len(response.text) // 4)
                )
            except (ModelError, PromptError) as exc:
                log.warning("image prompt rewrite failed, using the request as is: %s", exc)
        prompt = prompt[:IMAGE_PROMPT_LIMIT]
        yield Notice(f"Generating an image: {prompt}", progress="image")
        # Its span: the conventions' multimodal operation (they name none for pictures alone).
        picture_prompt = (Message("user", prompt),)
        metrics.turn_model(self.image_model.name, picture_prompt, "generate_content")
        try:
            image = await self.image_model.generate_image(prompt)
        except ModelError as exc:
            metrics.image(self.image_model.name, exc)
            yield Notice(f"The image could not be generated: {exc}", "error")
            return
        meta: dict[str, object] = {"kind": "image", "prompt": prompt, "status": "complete"}
        if (turn := metrics.current_turn.get()) is not None:
            meta["turn"] = turn.id
        turns = (Turn("user", request), Turn("assistant", f"[image] {prompt}", meta=meta))
        counters = {"usage_images": 1}
        if usage is not None:  # /usage and the daily budget count the rewrite's tokens
            counters["usage_input_tokens"] = usage.input_tokens
            counters["usage_output_tokens"] = usage.output_tokens
        save = self.store.append(incoming.chat, *turns, counters=counters)
        with metrics.step("fmbot store write"):  # a step of this turn, whichever context saves
            await asyncio.get_running_loop().create_task(save, context=context)
        if usage is not None:
            await self._account(incoming, usage.total_tokens)
        metrics.image(self.image_model.name)
        yield ImageReply(image.data, image.mime_type, prompt)

    # --- /image (the other commands are in bot.commands) ---------------------------------

    async def _image(self, incoming: Incoming, arg: str) -> AsyncGenerator[ReplyEvent, None]:
        if not arg:
            yield Notice("Tell me what to draw: /image a lighthouse on a cliff, watercolor")
            return
        async for event in self._image_turn(incoming, arg, rewrite=False):
            yield event


_PICTURE_META = ("pictures", "pictures_lost")


def _message(turn: Turn) -> Message:
    """A stored turn as a model message; a picture turn keeps its references in ``meta``, a
    follow-up those of earlier pictures it found gone."""
    return Message(turn.role, turn.text, {k: v for k in _PICTURE_META if (v := turn.meta.get(k))})


def passages_of(hits: Sequence[Hit]) -> list[Passage]:
    """Hits as a template sees them, numbered from 1 as the prompt and the reply cite them."""
    return [Passage(n, h.text, h.source, h.heading) for n, h in enumerate(hits, 1)]


async def template_passages(
    retriever: Retriever | None,
    template: PromptTemplate,
    text: str,
    history: Sequence[Message] = (),
) -> tuple[Hit, ...]:
    """The passages a turn of ``template`` gets for ``text``: the one rule the bot, ``fmbot
    batch run`` and ``fmbot eval`` share (none without ``knowledge``); KnowledgeError without a
    retriever."""
    if not template.knowledge:
        return ()
    if retriever is None:
        raise KnowledgeError(
            f"Template {template.name!r} answers from knowledge bases, which this run was "
            "started without."
        )
    return await retriever.for_turn(
        template.knowledge, text, history, template.knowledge_top_k, template.knowledge_min_score
    )


def cited_sources(hits: Sequence[Hit], reply: str) -> tuple[Source, ...]:
    """The passages the reply cites as [n], or all it was given when it cites none (small
    models rarely do)."""
    return _cited([Source(n, h.source, h.heading) for n, h in enumerate(hits, 1)], reply)


def stored_sources(turn: Turn) -> tuple[Source, ...]:
    """The sources of a stored reply (its ``knowledge`` meta): for a reply sent again or shown
    again, the same as when it was first sent."""
    used = turn.meta.get("knowledge")
    if not isinstance(used, list):
        return ()
    sources = [
        Source(item["n"], str(item.get("source")), str(item.get("heading") or ""))
        for item in used
        if isinstance(item, dict) and isinstance(item.get("n"), int)
    ]
    return _cited(sources, turn.text)


def _cited(sources: Sequence[Source], reply: str) -> tuple[Source, ...]:
    cited = cited_numbers(reply)
    return tuple(s for s in sources if s.n in cited) or tuple(sources)


def _lost_text(gone: int, of: int) -> str:
    if of == 1:
        return LOST_PICTURE
    them = "it" if gone == 1 else "them"
    which = f"the {of} pictures" if gone == of else f"{gone} of the {of} pictures"
    return (
        f"I could not get {which} you sent earlier again, so this answer does not see {them}. "
        f"Send {them} again to ask about {them}."
    )


def _smaller_input(prompt: _Prompt, refusal: ContextOverflowError) -> int:
    """The input limit, by the model's count, for a retry of ``prompt`` that ``refusal`` turned
    down: scaled to what the server said it takes when it gave numbers, else half."""
    sent = prompt.input_tokens
    needed, available = refusal.needed, refusal.available
    if needed and available:
        # ``needed`` may include the reply's reserve (vLLM, OpenAI's "you requested"), which
        # only makes this smaller.
        room = available - (prompt.options.max_tokens or 0)
        limit = int(room * sent / needed * OVERFLOW_MARGIN)
    else:
        limit = sent // 2
    return max(0, min(limit, sent - 1))


def _failure_text(exc: ModelError, prompt: _Prompt) -> str:
    """What a failed reply tells the user: a refusal as too long of a prompt that still carried
    history is about the conversation, not the message."""
    if not isinstance(exc, ContextOverflowError) or not prompt.history:
        return str(exc)
    counts = (
        f" (the model's server counts {exc.needed} tokens and takes {exc.available})"
        if exc.needed and exc.available
        else ""
    )
    return (
        "This conversation no longer fits the model's context window, even with older "
        f"messages left out{counts}. Send /new to start a new conversation."
    )


def _without_pictures(message: Message) -> Message:
    return dataclasses.replace(message, pictures=()) if message.pictures else message


@contextlib.asynccontextmanager
async def _first(deltas: AsyncIterator[str], seconds: float) -> AsyncIterator[asyncio.Future[str]]:
    """The first delta as a future, waited for up to ``seconds`` before the block starts (it
    may still be pending then); cancelled and waited for if the block is left early."""
    step = asyncio.ensure_future(anext(deltas))
    try:
        await asyncio.wait({step}, timeout=seconds)
        yield step
    finally:
        if not step.done():
            step.cancel()
            await asyncio.wait({step})
        if not step.cancelled():
            step.exception()  # retrieved: the stream's own code reports its errors


def _queued_text(ahead: int) -> str:
    replies = "reply" if ahead == 1 else "replies"
    return f"Your message is in line: the model is finishing {ahead} other {replies} first."


async def until(stop: asyncio.Event, deltas: AsyncIterator[T]) -> AsyncGenerator[T, None]:
    """``deltas`` until ``stop`` is set, also while waiting for the next one (a model that
    takes long to start, or a non-streaming one, is stopped at once, not at its first word).
    Public for channels that stop a turn themselves (the web channel, at shutdown)."""
    stopped = asyncio.ensure_future(stop.wait())
    step: asyncio.Future[T] | None = None
    try:
        while True:
            step = asyncio.ensure_future(anext(deltas))
            await asyncio.wait({step, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                return  # stopped; the pending step is ended below
            try:
                delta = step.result()
            except StopAsyncIteration:
                return
            step = None
            yield delta
    finally:
        stopped.cancel()
        if step is not None and not step.done():
            # Also when we are cancelled or closed: ``deltas`` must not be left running (it
            # could not be closed, and would hold the model) — end its step and wait for it,
            # to its end: anyio (a web server's task group) cancels us again at every pass of
            # the loop, while the step may still be saving the stopped turn.
            step.cancel()
            cancelled = False
            while not step.done():
                try:
                    await asyncio.wait({step})
                except asyncio.CancelledError:
                    cancelled = True
            if cancelled:
                raise asyncio.CancelledError
        if step is not None and not step.cancelled():
            step.exception()  # retrieved: a model error after the stop is of no interest


__all__ = ["DialogManager", "FmbotError"]

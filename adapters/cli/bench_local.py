"""``fmbot bench --model local:smollm2``: the embedded model through fmbot against raw llama.cpp.

Three figures, all in one run on this machine, so they compare like with like:

* **decode**: tokens per second while streaming a long reply, raw llama-cpp-python
  (``create_completion(stream=True)`` on the same tokens and settings) against fmbot's
  ``LocalModel.generate`` (a worker thread handing text to the event loop), alternating runs.
* **first token** of a long conversation through fmbot's turn path (window fitting, prompt
  building, cache reuse) at its early turns and at turns past the window, for one chat and for
  two chats answered in turn; next to it raw llama-cpp-python's first token for the same prompt
  when all but the new message is cached (the best any caller can do at that length).
* **before the model**: fmbot's own time per turn (fitting the window, building the prompt).
"""

from __future__ import annotations

import os
import platform
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.context import fit_to_window
from bot.events import Message
from bot.models.base import GenerationOptions
from bot.models.local import LocalModel, _without_extra_buffer_types, find_gguf

WORDS = (
    "river",
    "stone",
    "lamp",
    "garden",
    "window",
    "cloud",
    "letter",
    "bridge",
    "market",
    "winter",
    "song",
    "paper",
    "forest",
    "harbour",
    "engine",
    "candle",
    "mirror",
    "ladder",
    "orchard",
    "signal",
)
INSTRUCTION = "You are a helpful assistant. Answer briefly."
NEW_MESSAGE_MARKERS = 8  # template tokens around a new user message and the reply's header
STORY = [Message("system", INSTRUCTION), Message("user", "Tell a long story about the sea.")]


@dataclass
class LocalBench:
    model: str
    threads: int
    window: int
    turns: int
    words: int
    decode_raw: list[float] = field(default_factory=list)
    decode_fmbot: list[float] = field(default_factory=list)
    #: (chats, turn, first-token seconds, fmbot's ms before the model)
    ttft: list[tuple[int, int, float, float]] = field(default_factory=list)
    #: (turn, raw llama-cpp-python's first-token seconds with all but the new message cached)
    raw_ttft: list[tuple[int, float]] = field(default_factory=list)

    @property
    def late(self) -> int:
        """The first of the late turns reported (past the window at the default size)."""
        return max(self.turns - 5, 5)

    def reported(self, turn: int) -> bool:
        return 2 <= turn <= 4 or turn >= self.late

    def report(self) -> str:
        raw, ours = statistics.median(self.decode_raw), statistics.median(self.decode_fmbot)
        lines = [
            f"fmbot bench --model {self.model}: {self.window}-token window, {self.threads} "
            f"llama.cpp threads, messages of {self.words} words, {self.turns} turns; "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            f"decode        raw llama-cpp-python {raw:.1f} tok/s, fmbot {ours:.1f} tok/s "
            f"({ours / raw:.2f}x; medians of {len(self.decode_raw)} alternating runs)",
        ]
        for label, lo, hi in (("early", 2, 4), ("late", self.late, self.turns)):
            parts = []
            for chats in sorted({c for c, *_ in self.ttft}):
                rows = [r[2] for r in self.ttft if r[0] == chats and lo <= r[1] <= hi]
                if rows:
                    parts.append(f"fmbot {chats} chat{'s' if chats > 1 else ''} {_span(rows)}")
            raw_rows = [t for n, t in self.raw_ttft if lo <= n <= hi]
            if raw_rows:
                parts.append(f"raw with the history cached {_span(raw_rows)}")
            if parts:
                lines.append(f"first token   turns {lo}-{hi} ({label}): " + ", ".join(parts))
        before = [r[3] for r in self.ttft]
        lines.append(
            f"before model  fmbot's window fitting and prompt: p50 {statistics.median(before):.1f} "
            f"ms, max {max(before):.1f} ms per turn"
        )
        return "\n".join(lines)


def _span(values: Any) -> str:
    v = sorted(values)
    return f"{v[0]:.2f}-{v[-1]:.2f} s"


async def run_local_bench(
    name: str,
    path: Path | None,
    *,
    window: int,
    threads: int | None,
    turns: int,
    words: int,
    decode_tokens: int = 200,
    reply_tokens: int = 48,
) -> LocalBench:
    from llama_cpp import Llama

    path = path or find_gguf()
    threads = threads or max(1, (os.cpu_count() or 2) // 2)
    result = LocalBench(name, threads, window, turns, words)
    model = LocalModel(path, name=name, context_window=window, threads=threads)
    with _without_extra_buffer_types():
        raw = Llama(model_path=str(path), n_ctx=window, n_threads=threads, verbose=False)
    await _decode(model, raw, result, decode_tokens)
    for chats in (1, 2):
        model = LocalModel(path, name=name, context_window=window, threads=threads)
        await _conversation(model, raw, result, chats, reply_tokens)
    return result


async def _decode(
    model: LocalModel, raw: Any, result: LocalBench, tokens: int, runs: int = 3
) -> None:
    prompt = model._prompt(STORY)
    options = GenerationOptions(max_tokens=tokens, temperature=0)
    for _ in range(runs):
        raw.reset()
        first, count = 0.0, 0
        stream = raw.create_completion(
            prompt=prompt.tokens, max_tokens=tokens, temperature=0, repeat_penalty=1.15, stream=True
        )
        for _chunk in stream:
            count += 1
            first = first or time.perf_counter()
        result.decode_raw.append((count - 1) / (time.perf_counter() - first))
        model._llama.reset()
        first, produced = 0.0, 0
        async for chunk in model.generate(STORY, options):
            if isinstance(chunk, str):
                first = first or time.perf_counter()
            else:
                produced = chunk.output_tokens
        result.decode_fmbot.append((produced - 1) / (time.perf_counter() - first))


async def _conversation(
    model: LocalModel, raw: Any, result: LocalBench, chats: int, reply_tokens: int
) -> None:
    rnd = random.Random(chats)
    prefix = [Message("system", INSTRUCTION)]
    histories: list[list[Message]] = [[] for _ in range(chats)]
    options = GenerationOptions(max_tokens=reply_tokens, temperature=0)
    for turn in range(1, result.turns + 1):
        for history in histories:
            current = Message("user", " ".join(rnd.choice(WORDS) for _ in range(result.words)))
            started = time.perf_counter()
            messages, _ = await fit_to_window(model, prefix, history, current, reserve=reply_tokens)
            model._prompt(messages)  # what generate() feeds, built here as it is in a turn
            before = time.perf_counter() - started
            first, reply = 0.0, ""
            begun = time.perf_counter()
            async for chunk in model.generate(messages, options):
                if isinstance(chunk, str):
                    first = first or time.perf_counter()
                    reply += chunk
            history += [current, Message("assistant", reply)]
            result.ttft.append((chats, turn, first - begun, before * 1000))
            if chats == 1 and result.reported(turn):
                tokens = model._prompt(messages).tokens
                new = len(model._tokens(current.text, special=False)) + NEW_MESSAGE_MARKERS
                result.raw_ttft.append((turn, _raw_first_token(raw, tokens, new)))


def _raw_first_token(raw: Any, tokens: list[int], new: int) -> float:
    """llama-cpp-python's first token for ``tokens`` with all but the last ``new`` cached."""
    raw.reset()
    raw.create_completion(prompt=tokens[:-new], max_tokens=1, temperature=0)
    started = time.perf_counter()
    for _chunk in raw.create_completion(prompt=tokens, max_tokens=1, temperature=0, stream=True):
        break
    return time.perf_counter() - started

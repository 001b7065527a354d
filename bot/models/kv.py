"""Reusing llama.cpp's KV cache across turns and conversations (the embedded model).

llama-cpp-python reuses the cached prompt only up to the first token that differs. Two things
defeat that in a chat bot, and each would make the model read the whole history again (30+ s at
4,096 tokens on two cores):

* **Trimming.** Once a conversation fills the window, each turn drops its oldest messages, so
  the prompt differs right after the instruction. :func:`plan` finds where the kept history
  continues in the cache and :func:`shift` removes the dropped block and moves the rest back
  (llama.cpp's context shift, as llama-server does it). The moved entries were computed while
  the dropped block was in view: a small approximation that keeps the instruction exact.
* **Interleaved conversations.** One llama.cpp context serves every chat. :class:`SavedStates`
  keeps the KV state of the conversations that were switched away from (bounded in bytes,
  least recently used dropped first) and restores the one a prompt continues.

Every function here runs in the model's worker thread, under its lock.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Tokens = npt.NDArray[np.intc]
Prompt = Sequence[int] | Tokens

#: Tokens of the kept history that must match to place it in the cache: long enough that a
#: chance match is out of the question, short enough for any trimmed history.
SHIFT_PROBE = 32
#: A context holding fewer tokens than this is not worth saving (a short exchange re-reads fast).
MIN_SAVED_TOKENS = 256


def cached_tokens(llama: Any) -> Tokens:
    """The token ids llama.cpp's context holds, in position order."""
    return llama.input_ids[: llama.n_tokens]  # type: ignore[no-any-return]


def common_prefix(cached: Tokens, tokens: Prompt) -> int:
    """How many leading ``tokens`` ``cached`` holds already."""
    m = min(len(cached), len(tokens))
    if m == 0:
        return 0
    differs = np.nonzero(cached[:m] != np.asarray(tokens[:m], dtype=cached.dtype))[0]
    return int(differs[0]) if len(differs) else m


@dataclass(frozen=True, slots=True)
class Reuse:
    """How much of a prompt a context holding some tokens can skip evaluating."""

    common: int  # leading tokens cached as they are
    #: Where the kept history continues in the cache: drop ``[common, resume)`` and shift the
    #: rest back. None: nothing to drop.
    resume: int | None
    reused: int  # prompt tokens that need no evaluation (after the shift, if any)


def plan(cached: Tokens, tokens: Prompt) -> Reuse:
    """What a context holding ``cached`` can reuse of the prompt ``tokens``."""
    n = len(cached)
    common = common_prefix(cached, tokens)
    rest = tokens[common:]
    probe = np.asarray(rest[:SHIFT_PROBE], dtype=cached.dtype)
    if common == 0 or common >= n or len(probe) < SHIFT_PROBE:
        return Reuse(common, None, common)  # nothing cached, nothing dropped, or too little
    # Where the kept part of the history begins in the cache: its first tokens, found.
    for start in np.nonzero(cached[common + 1 : n - len(probe) + 1] == probe[0])[0]:
        at = common + 1 + int(start)
        if np.array_equal(cached[at : at + len(probe)], probe):
            return Reuse(common, at, common + common_prefix(cached[at:], rest))
    return Reuse(common, None, common)


def shift(llama: Any, reuse: Reuse) -> None:
    """Drop ``[reuse.common, reuse.resume)`` from the context and move what follows back."""
    from llama_cpp import llama_cpp as low_level

    if reuse.resume is None:
        return
    ctx = llama._ctx
    n = llama.n_tokens
    if not low_level.llama_memory_can_shift(ctx.memory):
        return  # llama-cpp-python then re-reads the prompt from the difference on
    if not ctx.kv_cache_seq_rm(0, reuse.common, reuse.resume):
        return
    dropped = reuse.resume - reuse.common
    ctx.kv_cache_seq_shift(0, reuse.resume, n, -dropped)
    llama.input_ids[reuse.common : n - dropped] = llama.input_ids[reuse.resume : n]
    llama.n_tokens = n - dropped
    llama._requires_eval = True  # the last logits are not the new last token's


@dataclass(eq=False, slots=True)
class _Saved:
    tokens: Tokens
    data: Any  # ctypes array: llama.cpp's state of sequence 0
    size: int


class SavedStates:
    """KV states of conversations other than the one in the context, up to ``budget`` bytes."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._saved: list[_Saved] = []  # least recently used first

    @property
    def size(self) -> int:
        return sum(s.size for s in self._saved)

    def __len__(self) -> int:
        return len(self._saved)

    def prepare(self, llama: Any, tokens: Sequence[int]) -> Reuse:
        """Make the context the best start for ``tokens``: if it holds another conversation,
        save that one and restore the saved state ``tokens`` continues, if any. Returns what of
        ``tokens`` the context can then reuse."""
        live = cached_tokens(llama)
        reuse = plan(live, tokens)
        if self.budget <= 0 or reuse.reused * 2 >= len(live):
            return reuse  # the same conversation goes on (or nothing to keep)
        if len(live) >= MIN_SAVED_TOKENS:
            self._save(llama, live)
        best: tuple[_Saved, Reuse] | None = None
        for saved in self._saved:
            candidate = plan(saved.tokens, tokens)
            if candidate.reused > (best[1].reused if best else reuse.reused):
                best = (saved, candidate)
        if best is None or not self._load(llama, best[0]):
            return reuse
        return best[1]

    def _save(self, llama: Any, live: Tokens) -> None:
        from llama_cpp import llama_cpp as low_level

        # Earlier states of this conversation are superseded by this one.
        self._saved = [s for s in self._saved if plan(live, s.tokens).reused * 2 < len(s.tokens)]
        ctx = llama._ctx.ctx
        size = int(low_level.llama_state_seq_get_size(ctx, 0))
        if size > self.budget:
            return
        data = (ctypes.c_uint8 * size)()
        written = int(low_level.llama_state_seq_get_data(ctx, data, size, 0))
        if written <= 0:
            return
        self._saved.append(_Saved(live.copy(), data, written))
        while self.size > self.budget:
            self._saved.pop(0)

    def _load(self, llama: Any, saved: _Saved) -> bool:
        from llama_cpp import llama_cpp as low_level

        self._saved.remove(saved)  # live again; saved anew when another conversation comes
        llama._ctx.kv_cache_clear()
        llama.n_tokens = 0
        if not low_level.llama_state_seq_set_data(llama._ctx.ctx, saved.data, saved.size, 0):
            llama._ctx.kv_cache_clear()
            return False
        n = len(saved.tokens)
        llama.input_ids[:n] = saved.tokens
        llama.n_tokens = n
        llama._requires_eval = True  # the logits are another conversation's
        return True

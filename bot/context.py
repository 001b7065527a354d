"""Fitting a conversation into the model's context window by the model's own token count."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bot.errors import ContextOverflowError
from bot.events import Message
from bot.models.base import TextModel

#: Four times the characters an average token holds (about 4), more than any real message averages
#: even in runs of one character: text longer than this per token of the window cannot fit it.
MAX_CHARS_PER_TOKEN = 16


async def fit_to_window(
    model: TextModel,
    prefix: Sequence[Message],
    history: Sequence[Message],
    current: Message,
    reserve: int,
    pictures: Callable[[Message], int] = lambda m: len(m.pictures),
    *,
    limit: int | None = None,
) -> tuple[list[Message], int]:
    """``prefix + newest history + current`` within ``model.context_window - reserve`` tokens.

    A picture counts as ``model.picture_tokens``, whatever its size, so the cost of pictures not
    fetched yet is known: ``pictures(message)`` says how many a message has (or will have).
    The instruction and examples (``prefix``) and the current message are always kept; history is
    dropped oldest first, a user/assistant pair at a time so it still starts with a user turn.
    ``limit`` caps the input below that (a server that refused a prompt this count said fits:
    the count undercounts its tokenizer, or the window is configured larger than the server's).
    Returns the messages and their token count. Raises ContextOverflowError when even
    ``prefix + current`` does not fit.
    """
    budget = model.context_window - reserve
    if limit is not None:
        budget = min(budget, limit)
    # Refused before any tokenizer sees it: a remote one would be sent megabytes (and answer
    # HTTP 413) to confirm what the length alone proves.
    chars = sum(len(m.text) for m in (*prefix, current))
    if chars > max(budget, 0) * MAX_CHARS_PER_TOKEN:
        raise ContextOverflowError(chars // 4, max(budget, 0))

    async def size(keep_from: int) -> int:
        messages = [*prefix, *history[keep_from:], current]
        count = sum(map(pictures, messages))
        return await model.count_tokens(messages) + count * model.picture_tokens

    whole = await size(0)
    if whole <= budget:
        return [*prefix, *history, current], whole
    minimal = await size(len(history))
    if minimal > budget:
        raise ContextOverflowError(minimal, max(budget, 0), pictures(current))
    # Binary search over pair boundaries for the smallest drop that fits: size() is monotone.
    starts = list(range(0, len(history) + 1, 2))
    if starts[-1] != len(history):
        starts.append(len(history))
    lo, hi = 0, len(starts) - 1  # starts[hi] fits, starts[lo] does not
    sizes = {len(history): minimal}
    while hi - lo > 1:
        mid = (lo + hi) // 2
        sizes[starts[mid]] = await size(starts[mid])
        if sizes[starts[mid]] <= budget:
            hi = mid
        else:
            lo = mid
    return [*prefix, *history[starts[hi] :], current], sizes[starts[hi]]

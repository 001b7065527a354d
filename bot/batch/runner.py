"""Running cases through a template and a model with bounded concurrency.

A case that fails (bad variable, model error, anything) becomes an ``error`` result: one bad row
must not cost the rest of a long run. Only cancellation stops the run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from bot.batch.checkpoint import Failure, RowResult
from bot.dialog import passages_of, template_passages
from bot.errors import (
    ContextOverflowError,
    FmbotError,
    ModelUnavailableError,
    RateLimitError,
    StreamInterruptedError,
)
from bot.events import Message
from bot.kb.index import Hit
from bot.kb.retrieval import Retriever, hit_records
from bot.models.base import GenerationOptions, TextModel
from bot.prompts.render import build_messages
from bot.prompts.template import PromptTemplate
from bot.prompts.variables import coerce_variables

log = logging.getLogger(__name__)

MESSAGE_COLUMN = "message"
OnResult = Callable[[RowResult], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Case:
    """One input row: its index, the user message and the values for template variables."""

    row: int
    key: str
    message: object
    values: Mapping[str, object]


def case_key(values: Mapping[str, object], fixed: Mapping[str, str]) -> str:
    """A fingerprint of everything a row sends besides the template: its cells and ``--var``."""
    blob = json.dumps([values, fixed], sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def make_cases(rows: Iterable[Mapping[str, object]], fixed: Mapping[str, str]) -> list[Case]:
    cases = []
    for i, row in enumerate(rows):
        values = {k: v for k, v in row.items() if k != MESSAGE_COLUMN}
        cases.append(Case(i, case_key(row, fixed), row.get(MESSAGE_COLUMN), values))
    return cases


def render_case(
    template: PromptTemplate,
    fixed: Mapping[str, str],
    case: Case,
    hits: tuple[Hit, ...] = (),
    stable_prefix: bool = False,
) -> list[Message]:
    """The messages a case sends (every mode renders with this), with the passages retrieved
    for it placed as the bot places them; ValueError or FmbotError when its cells do not fit the
    template."""
    return build_messages(
        template,
        _message_text(case),
        (),
        coerce_variables(template, {**fixed, **case.values}, known_only=False),
        knowledge=passages_of(hits),
        stable_prefix=stable_prefix,
    )


async def case_passages(
    retriever: Retriever | None, template: PromptTemplate, case: Case
) -> tuple[Hit, ...]:
    """The passages the bot would retrieve for the case's message (a first turn: no history);
    none for a template without ``knowledge``. KnowledgeError without a retriever."""
    message = "" if case.message is None else str(case.message)
    return await template_passages(retriever, template, message)


def retrieved_column(template: PromptTemplate, hits: tuple[Hit, ...]) -> str | None:
    """A row's ``retrieved`` cell: the retrieved passages as JSON (None without knowledge)."""
    if not template.knowledge:
        return None
    return json.dumps(hit_records(hits), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Runner:
    template: PromptTemplate
    model: TextModel
    options: GenerationOptions
    #: ``--var`` values: every row gets them unless its own column says otherwise.
    fixed: Mapping[str, str]
    #: Finds the passages of a template with ``knowledge:``, as the bot does.
    retriever: Retriever | None = None

    async def run_case(self, case: Case) -> RowResult:
        started = time.monotonic()
        try:
            hits = await case_passages(self.retriever, self.template, case)
        except FmbotError as exc:  # no knowledge base, another embedder, the embedder failed
            return self._failed(case, str(exc), started, failure_kind(exc))
        started = time.monotonic()  # latency is the model's: retrieval (loading e5) is not
        try:
            stable = self.model.reuses_prompt_prefix
            messages = render_case(self.template, self.fixed, case, hits, stable)
        except (FmbotError, ValueError) as exc:
            # Nothing was sent: the row's cells do not fit the template, and will not next time.
            return self._failed(case, str(exc), started, "input")
        except Exception as exc:  # a bug must not end a long run either
            log.exception("row %d failed unexpectedly", case.row)
            return self._failed(case, f"{type(exc).__name__}: {exc}", started, "other")
        try:
            response = self.model.respond(messages, self.options)
            reply = await response
        except FmbotError as exc:
            return self._failed(case, str(exc), started, failure_kind(exc))
        except Exception as exc:  # a bug in a backend must not end a long run
            log.exception("row %d failed unexpectedly", case.row)
            return self._failed(case, f"{type(exc).__name__}: {exc}", started, "other")
        usage = response.usage
        return RowResult(
            row=case.row,
            key=case.key,
            status="ok",
            reply=reply,
            input_tokens=usage.input_tokens if usage else None,
            output_tokens=usage.output_tokens if usage else None,
            latency_ms=_elapsed_ms(started),
            retrieved=retrieved_column(self.template, hits),
        )

    def _failed(self, case: Case, error: str, started: float, failure: Failure) -> RowResult:
        return RowResult(
            row=case.row,
            key=case.key,
            status="error",
            error=error,
            latency_ms=_elapsed_ms(started),
            failure=failure,
        )

    async def run(self, cases: Iterable[Case], concurrency: int, on_result: OnResult) -> None:
        """Run ``cases`` with at most ``concurrency`` requests in flight; report each result."""
        pending = iter(cases)

        async def worker() -> None:
            # Workers pull from one iterator (no await between next() calls, so no races).
            for case in pending:
                await on_result(await self.run_case(case))

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(max(1, concurrency)):
                    group.create_task(worker())
        except BaseExceptionGroup as failed:
            # Only on_result can fail (a case never raises): report its error, not a group.
            raise failed.exceptions[0] from None


def failure_kind(exc: FmbotError) -> Failure:
    """Whether running the row again may help (``retry``) or its input must change."""
    if isinstance(exc, RateLimitError | ModelUnavailableError | StreamInterruptedError):
        return "retry"  # 429, 5xx, network and timeouts, after the backend's own retries
    if isinstance(exc, ContextOverflowError):
        return "input"  # the row's message (with the template) is too long for the model
    return "other"


def _message_text(case: Case) -> str:
    if case.message is None or not str(case.message).strip():
        raise ValueError(f"the {MESSAGE_COLUMN!r} column is empty in this row")
    return str(case.message)


def _elapsed_ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)

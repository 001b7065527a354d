"""``fmbot batch run --mode batch``: the whole run as one Yandex batch task.

Rows are rendered exactly as in the other modes, written as a request dataset, uploaded,
validated and processed by the Batch Inference service; the result dataset is matched back to
rows by request (never by position) and written as the same output table. The token columns
come from each result's ``usage`` (empty when the service sends a plain-text response);
``latency_ms`` stays empty: the service does not time rows.

The progress file records the dataset and task ids as soon as they exist (``TASK_KIND`` lines),
so an interrupted command re-attaches to its running task instead of submitting a new one. Rows
that failed or got no result are marked ``error``; the next run sends only those, as a new task.

A template with ``knowledge:`` gets each row's passages before it is rendered, as in the other
modes; they are noted with the dataset, so a re-attached run records them with the replies.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bot.batch import table
from bot.batch.checkpoint import (
    Failure,
    ProgressFile,
    RowResult,
    progress_path,
    read_task_notes,
)
from bot.batch.job import (
    Summary,
    check_columns,
    header_for,
    previous_results,
    still_to_run,
    unwritable,
    write_results,
)
from bot.batch.runner import (
    Case,
    case_passages,
    failure_kind,
    make_cases,
    render_case,
    retrieved_column,
)
from bot.batch.yandex import (
    BatchClient,
    DatasetInvalidError,
    TaskState,
    Usage,
    request_key,
    request_line,
    response_text,
    response_usage,
)
from bot.errors import ConfigError, FmbotError
from bot.kb.retrieval import Retriever
from bot.model_spec import yandex_text_spec
from bot.models.base import GenerationOptions
from bot.prompts.template import PromptTemplate

log = logging.getLogger(__name__)

BATCH_ACCEPTED = "batch mode needs a yandex: model, e.g. --model yandex:yandexgpt-lite/latest"


class BatchProgress(Protocol):
    def start(self, total: int, done: int) -> None: ...

    def advance(self, result: RowResult) -> None: ...

    def task(self, state: TaskState) -> None: ...


@dataclass
class BatchSummary(Summary):
    task_id: str = ""
    #: The task still runs (``--no-wait``): results come with the next run.
    pending: bool = False
    #: This run started the task (rather than finding an earlier run's).
    submitted_now: bool = False
    #: Rows were left to run, but every one was refused before a task could start (validation,
    #: or cells that do not fit the template): no task ran.
    nothing_submitted: bool = False
    deleted_datasets: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PendingTask:
    """A task of an earlier run that has not been collected yet."""

    operation_id: str
    task_id: str
    #: row -> (case key, request fingerprint)
    rows: dict[int, tuple[str, str]]
    datasets: tuple[str, ...]
    #: row -> its retrieved passages (JSON), for a template with ``knowledge:``
    passages: dict[int, str] = field(default_factory=dict)


def model_uri(spec: str, folder_id: str) -> str:
    kind, _, name = spec.partition(":")
    if kind != "yandex":
        raise ConfigError("--mode", "batch", BATCH_ACCEPTED)
    uri, _ = yandex_text_spec(name, folder_id)
    return uri


def fingerprint(request: object) -> str:
    return hashlib.sha256(request_key(request).encode()).hexdigest()[:24]


def pending_task(notes: list[dict[str, Any]]) -> tuple[PendingTask | None, list[str]]:
    """(the task still to collect, every dataset the notes name) from a progress file's notes."""
    datasets: list[str] = []
    rows: dict[str, dict[int, tuple[str, str]]] = {}
    passages: dict[str, dict[int, str]] = {}
    started: dict[str, tuple[str, str]] = {}  # operation -> (task, source dataset)
    finished: set[str] = set()
    for note in notes:
        event = note.get("event")
        if event == "dataset":
            datasets.append(str(note["dataset_id"]))
            rows[str(note["dataset_id"])] = {
                int(r): (str(k), str(f)) for r, k, f in note.get("rows", [])
            }
            passages[str(note["dataset_id"])] = {
                int(r): str(p) for r, p in note.get("passages", {}).items()
            }
        elif event == "started":
            started[str(note["operation_id"])] = (str(note["task_id"]), str(note["dataset_id"]))
        elif event == "finished":
            finished.add(str(note["operation_id"]))
            if note.get("result_dataset_id"):
                datasets.append(str(note["result_dataset_id"]))
    for operation_id, (task_id, dataset_id) in reversed(started.items()):
        if operation_id not in finished:
            task = PendingTask(
                operation_id,
                task_id,
                rows.get(dataset_id, {}),
                (dataset_id,),
                passages.get(dataset_id, {}),
            )
            return task, datasets
    return None, datasets


def _failed(row: int, key: str, error: str, failure: Failure) -> RowResult:
    return RowResult(row=row, key=key, status="error", error=error, failure=failure)


async def run_batch_mode(
    client: BatchClient,
    template: PromptTemplate,
    model_spec: str,
    options: GenerationOptions,
    fixed: Mapping[str, str],
    input_path: Path,
    output: Path,
    *,
    progress: BatchProgress,
    wait: bool = True,
    keep_datasets: bool = False,
    retriever: Retriever | None = None,
) -> BatchSummary:
    uri = model_uri(model_spec, client.folder_id)
    data = await asyncio.to_thread(table.read_input, input_path)
    check_columns(data.columns, input_path)
    expected = header_for(template.name, model_spec)
    previous = await asyncio.to_thread(previous_results, output, expected)
    cases = make_cases(data.rows, fixed)
    by_row = {c.row: c for c in cases}
    results, todo = still_to_run(cases, previous)
    summary = BatchSummary(total=len(cases), skipped=len(results))
    progress.start(len(cases), len(results))
    path = progress_path(output)
    notes = await asyncio.to_thread(read_task_notes, path)
    pending, datasets = pending_task(notes)
    fresh = not path.exists()
    failed_first = False
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        async with ProgressFile(path, expected) as saved:

            async def record(result: RowResult) -> None:
                await saved.append(result)
                results[result.row] = result
                summary.ran += 1
                progress.advance(result)

            if pending is None and todo:
                try:
                    pending = await _submit(
                        client,
                        template,
                        fixed,
                        uri,
                        options,
                        todo,
                        saved,
                        record,
                        datasets,
                        retriever,
                    )
                except FmbotError:
                    # Nothing runs: delete what was uploaded, and leave no trace of this
                    # attempt if it was the output's first (another model may try next).
                    if not keep_datasets:
                        for gone in await _delete(client, datasets):
                            datasets.remove(gone)
                    failed_first = fresh and not summary.ran and not datasets
                    raise
                summary.nothing_submitted = pending is None
                summary.submitted_now = pending is not None
            if pending is not None:
                summary.task_id = pending.task_id
                if not wait:
                    summary.pending = True
                    return summary
                state = await client.wait(pending.operation_id, progress.task)
                await _collect(client, state, pending, by_row, record)
                await saved.note(
                    {
                        "event": "finished",
                        "operation_id": state.operation_id,
                        "task_id": state.task_id,
                        "result_dataset_id": state.result_dataset_id,
                    }
                )
                if state.result_dataset_id:
                    datasets.append(state.result_dataset_id)
    except OSError as exc:
        raise unwritable(output, exc) from exc
    finally:
        if failed_first:
            path.unlink(missing_ok=True)
    for case in cases:  # rows of an earlier run's task that this run did not send
        if case.row not in results:
            earlier = previous.get(case.row)
            results[case.row] = (
                earlier
                if earlier is not None and earlier.key == case.key
                else _failed(
                    case.row, case.key, "not sent yet: run the same command again", "retry"
                )
            )
    await write_results(output, data, cases, results, expected, summary)
    if not keep_datasets:
        summary.deleted_datasets = await _delete(client, datasets)
    return summary


async def _submit(
    client: BatchClient,
    template: PromptTemplate,
    fixed: Mapping[str, str],
    uri: str,
    options: GenerationOptions,
    todo: list[Case],
    saved: ProgressFile,
    record: Callable[[RowResult], Any],
    datasets: list[str],
    retriever: Retriever | None = None,
) -> PendingTask | None:
    """Render, upload and validate the rows, start the task; None when nothing is left to send.

    Rows the service's validation rejects are marked ``error`` with its reason, and the rest are
    sent again once.
    """
    lines: list[tuple[Case, str]] = []
    passages: dict[int, str] = {}
    for case in todo:
        try:
            hits = await case_passages(retriever, template, case)
        except FmbotError as exc:  # no knowledge base, another embedder, the embedder failed
            await record(_failed(case.row, case.key, str(exc), failure_kind(exc)))
            continue
        try:
            lines.append((case, request_line(render_case(template, fixed, case, hits))))
        except (FmbotError, ValueError) as exc:
            await record(_failed(case.row, case.key, str(exc), "input"))
            continue
        column = retrieved_column(template, hits)
        if column is not None:
            passages[case.row] = column
    for attempt in range(2):
        if not lines:
            return None
        rows = {c.row: (c.key, fingerprint(line)) for c, line in lines}
        sent = {c.row: passages[c.row] for c, _ in lines if c.row in passages}

        async def created(
            dataset_id: str, rows: dict[int, tuple[str, str]] = rows, sent: dict[int, str] = sent
        ) -> None:
            datasets.append(dataset_id)
            note: dict[str, object] = {
                "event": "dataset",
                "dataset_id": dataset_id,
                "rows": [[r, k, f] for r, (k, f) in rows.items()],
            }
            if sent:
                note["passages"] = {str(r): p for r, p in sent.items()}
            await saved.note(note)

        body = "".join(line + "\n" for _, line in lines).encode()
        name = f"fmbot-{template.name}-{uuid.uuid4().hex[:8]}"
        try:
            dataset_id = await client.upload_dataset(name, body, created)
        except DatasetInvalidError as exc:
            if attempt:
                raise
            bad: dict[int, str] = {}
            for problem in exc.problems:
                for line_number in problem.rows:
                    if 1 <= line_number <= len(lines):
                        bad[line_number - 1] = problem.description or problem.error
            if not bad:
                raise
            for index, reason in sorted(bad.items()):
                case = lines[index][0]
                await record(
                    _failed(
                        case.row,
                        case.key,
                        f"Yandex Cloud rejected this row's request: {reason}",
                        "input",
                    )
                )
            lines = [item for i, item in enumerate(lines) if i not in bad]
            continue
        state = await client.start(uri, options, dataset_id)
        await saved.note(
            {
                "event": "started",
                "operation_id": state.operation_id,
                "task_id": state.task_id,
                "dataset_id": dataset_id,
            }
        )
        return PendingTask(state.operation_id, state.task_id, rows, (dataset_id,), sent)
    return None


async def _collect(
    client: BatchClient,
    state: TaskState,
    task: PendingTask,
    cases: Mapping[int, Case],
    record: Callable[[RowResult], Any],
) -> None:
    """Turn a finished task into row results (only for rows whose cells are unchanged)."""
    replies: dict[str, tuple[str | None, Usage]] = {}
    if state.status == "COMPLETED" and state.result_dataset_id:
        for record_ in await client.download(state.result_dataset_id):
            replies[fingerprint(record_.get("request"))] = (
                response_text(record_.get("response")),
                response_usage(record_),
            )
    failure: Failure = "other" if state.status == "CANCELED" else "retry"
    reason = "the batch task returned no result for this row"
    by_line: dict[int, str] = {}
    answered = {request for request, (reply, _) in replies.items() if reply is not None}
    if state.status != "COMPLETED" or any(r not in answered for _, r in task.rows.values()):
        # The service's reasons: the task's error, or the lines it could not process.
        errors: list[str] = []
        try:
            described = await client.describe(state.task_id)
            errors, by_line = described.errors, described.by_line
        except FmbotError as exc:
            log.warning("describing batch task %s: %s", state.task_id, exc)
        if state.status != "COMPLETED":
            detail = state.error or "; ".join(errors[:3]) or "no reason given"
            reason = f"the batch task ended {state.status.lower()}: {detail}"
            by_line = {}  # the task's end is the reason for every row it did not answer
    # The request dataset's lines are the task's rows in the order they were noted.
    for line, (row, (key, request)) in enumerate(task.rows.items(), 1):
        case = cases.get(row)
        if case is None or case.key != key:
            continue  # the row changed since it was sent: it goes into the next task
        reply, usage = replies.get(request, (None, Usage()))
        if reply is not None:
            await record(
                RowResult(
                    row=row,
                    key=key,
                    status="ok",
                    reply=reply,
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    retrieved=task.passages.get(row),
                )
            )
        elif line in by_line:
            why = f"the batch task could not process this row: {by_line[line]}"
            await record(_failed(row, key, why, failure))
        else:
            await record(_failed(row, key, reason, failure))


async def _delete(client: BatchClient, datasets: list[str]) -> list[str]:
    deleted = []
    for dataset_id in dict.fromkeys(datasets):
        try:
            await client.delete_dataset(dataset_id)
            deleted.append(dataset_id)
        except FmbotError as exc:
            log.warning("could not delete dataset %s: %s", dataset_id, exc)
    return deleted
